"""`mlx-plamo export`: an MLX adapter as a Hugging Face PEFT adapter (+ card, eval records),
optionally the fused model, optionally uploaded to the Hub."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click

from adapters.fuse import FUSE_WRITER
from adapters.peft import DEFAULT_BASE_MODEL, EXPORT_DTYPES, EXPORT_WRITER
from mlx_plamo3.errors import USER_ERRORS
from mlx_plamo3.io import OUTPUT_MARKER, OutputDirectoryError, check_replaceable
from mlx_plamo3.lora import warn_other_base
from mlx_plamo3.messages import next_step, quoted
from mlx_plamo3.paths import artifact_dir, default_model_dir

RESULT_CONDITIONS = ("base", "base-fewshot", "lora")


def default_results() -> list[Path]:
    """The eval records under artifacts/results that exist, base conditions first."""

    candidates = [artifact_dir("results", f"{c}.json") for c in RESULT_CONDITIONS]
    return [p for p in candidates if p.is_file()]


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def directory_listing(path: Path) -> list[str]:
    return [
        f"  {f.relative_to(path)}  {human_size(f.stat().st_size)}"
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != OUTPUT_MARKER
    ]


def ensure_free(path: Path, force: bool, option: str, writer: str, keep: dict[str, Path]) -> None:
    """Refuse an output that may not be written: one that is, or holds, a directory this
    command reads (`keep`, by option), or one `check_replaceable` refuses."""
    target = path.resolve()
    for name, kept in keep.items():
        kept = kept.resolve()
        if target == kept or target in kept.parents:
            raise click.UsageError(
                f"{option} {path} would replace {name} {kept}, which this command reads; "
                "choose another output directory"
            )
    try:
        check_replaceable(path, writer, force)
    except OutputDirectoryError as exc:
        raise click.UsageError(f"{option}: {exc}") from None


@click.command(name="export", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--adapter",
    "adapter_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="MLX adapter directory (adapters.safetensors + adapter_config.json) from `train`.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Directory for the PEFT adapter [{artifact_dir('adapters')}/<adapter name>-peft].",
)
@click.option(
    "--dtype",
    type=click.Choice(EXPORT_DTYPES),
    default="float32",
    show_default=True,
    help="dtype of the exported LoRA factors (MLX trains them in float32).",
)
@click.option(
    "--base-model",
    help="base_model_name_or_path written to adapter_config.json [the adapter's metadata, "
    f"else {DEFAULT_BASE_MODEL}].",
)
@click.option(
    "--base-revision",
    help="Base model revision written to adapter_config.json [the adapter's metadata].",
)
@click.option(
    "--results",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Eval records file to ship in eval/ and tabulate in the model card; repeat for "
    f"several [{artifact_dir('results')}/{{base,base-fewshot,lora}}.json, those that exist].",
)
@click.option(
    "--fused", is_flag=True, help="Also write the base with the adapter merged in (HF layout)."
)
@click.option(
    "--base",
    "base_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Base model directory (HF or MLX layout) to fuse into; also checks that the adapter "
    f"fits it [{default_model_dir()} with --fused].",
)
@click.option(
    "--fused-out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the fused model [<out>-fused].",
)
@click.option(
    "--fused-dtype",
    type=click.Choice(EXPORT_DTYPES),
    default="bfloat16",
    show_default=True,
    help="dtype of the fused model's weights.",
)
@click.option(
    "--push-to-hub",
    "repo_id",
    help="Upload the adapter directory to this Hub repo 'user/name' (token from HF_TOKEN or "
    "`hf auth login`; checked before any work, never stored).",
)
@click.option("--private", is_flag=True, help="Create the Hub repo as private.")
@click.option(
    "--allow-other-base",
    is_flag=True,
    help="With --base: accept an adapter trained on another base of the same shape, with a "
    "warning (refused by default: its base weights fingerprint differs).",
)
@click.option("--force", is_flag=True, help="Replace existing output directories.")
def export_command(
    adapter_dir: Path,
    out: Path | None,
    dtype: str,
    base_model: str | None,
    base_revision: str | None,
    results: tuple[Path, ...],
    fused: bool,
    base_dir: Path | None,
    fused_out: Path | None,
    fused_dtype: str,
    repo_id: str | None,
    private: bool,
    allow_other_base: bool,
    force: bool,
) -> None:
    """Export an MLX LoRA adapter to Hugging Face PEFT format.

    Writes adapter_model.safetensors (lora_A [r, in], lora_B [out, r] under
    base_model.model.<module path>), adapter_config.json, a model card README.md and the eval
    records, so `peft.PeftModel.from_pretrained` loads it on top of the PLaMo 3 base."""
    from adapters.hub import HubError, check_repo_id, hub_token

    if private and not repo_id:
        raise click.UsageError("--private only makes sense with --push-to-hub")
    if fused_out and not fused:
        raise click.UsageError("--fused-out needs --fused")
    token = None
    if repo_id:
        # Before any work: a missing login must not cost an export first.
        try:
            check_repo_id(repo_id)
            token = hub_token()
        except HubError as exc:
            raise click.ClickException(str(exc)) from None
    out = out or artifact_dir("adapters", f"{adapter_dir.name}-peft")
    ensure_free(out, force, "--out", EXPORT_WRITER, {"--adapter": adapter_dir})
    if fused:
        base_dir = base_dir or default_model_dir()
        if not base_dir.is_dir():
            raise click.UsageError(f"--fused needs the base model; {base_dir} does not exist")
        fused_out = fused_out or out.with_name(f"{out.name}-fused")
        kept = {"--adapter": adapter_dir, "--base": base_dir, "--out": out}
        ensure_free(fused_out, force, "--fused-out", FUSE_WRITER, kept)
    records = list(results) or default_results()

    try:
        if base_dir is not None:  # refuse a mismatch before writing anything
            check_fits_base(adapter_dir, base_dir, warn_other_base(allow_other_base))
        started = time.perf_counter()
        export_adapter(adapter_dir, out, dtype, base_model, base_revision, records, force, repo_id)
        seconds = time.perf_counter() - started
        click.echo(f"exported {adapter_dir} -> {out} ({dtype}) in {seconds:.2f} s")
        click.echo("\n".join(directory_listing(out)))
        if fused:
            from adapters.fuse import fuse_adapter

            started = time.perf_counter()
            # check_fits_base has refused, or warned about, another base already.
            fuse_adapter(
                adapter_dir, base_dir, fused_out, fused_dtype, force, on_other_base=print_nothing
            )
            seconds = time.perf_counter() - started
            click.echo(f"fused into {base_dir} -> {fused_out} ({fused_dtype}) in {seconds:.2f} s")
            click.echo("\n".join(directory_listing(fused_out)))
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None

    if repo_id:
        from adapters.hub import push_folder

        try:
            url = push_folder(out, repo_id, token, private=private)
        except HubError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"uploaded {out} to {url}{' (private)' if private else ''}")
    click.echo(next_step(check_torch_command_line(adapter_dir, out, records)))


def export_adapter(
    adapter_dir: Path,
    out: Path,
    dtype: str,
    base_model: str | None,
    revision: str | None,
    records: list[Path],
    force: bool,
    repo_id: str | None,
) -> None:
    from adapters.peft import base_model_of, export_peft
    from mlx_plamo3.loading import is_hub_id
    from mlx_plamo3.lora import read_adapter_config

    _, document = read_adapter_config(adapter_dir)
    base = base_model_of(document, base_model)
    if not is_hub_id(base):
        click.secho(
            f"note: base_model_name_or_path is {base!r}, not a Hub id; pass --base-model "
            "org/name so others can load the adapter",
            fg="yellow",
            err=True,
        )
    export_peft(adapter_dir, out, dtype, base_model, revision, records, force, repo_id)


def check_torch_command_line(adapter_dir: Path, out: Path, records: list[Path]) -> str:
    """The check-torch run that proves this export: the base checkpoint the adapter names, the
    export, and the records of this adapter's eval among `records`."""
    from adapters.peft import base_model_of
    from eval.records import load_records
    from mlx_plamo3.lora import read_adapter_config

    _, document = read_adapter_config(adapter_dir)
    base = base_model_of(document, None)
    adapter = str(adapter_dir.resolve())
    mine = [r for r in records if load_records(r).summary.get("adapter") == adapter]
    results = quoted(mine[0]) if mine else "<records of mlx-plamo eval --adapter ...>"
    return (
        f"mlx-plamo check-torch --base {quoted(base)} --adapter {quoted(out)} --results {results}"
    )


def print_nothing(_message: str) -> None:
    pass


def check_fits_base(
    adapter_dir: Path, base_dir: Path, on_other_base: Callable[[str], None] | None
) -> None:
    """Refuse an adapter that does not fit `base_dir` (fingerprints, rank, targets, shapes)."""
    from adapters.peft import load_mlx_adapter
    from mlx_plamo3.loading import read_config
    from mlx_plamo3.model import ModelArgs

    args = ModelArgs.from_dict(read_config(base_dir), source=str(base_dir / "config.json"))
    load_mlx_adapter(adapter_dir, args, base_dir, on_other_base)
