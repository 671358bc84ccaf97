"""Command-line entry points of the adapters stage.

`mlx-plamo export`: an MLX adapter as a Hugging Face PEFT adapter (+ card, eval records),
optionally the fused model, optionally uploaded to the Hub. `mlx-plamo check-torch`: runs
`adapters.torch_check.run_check`, writes the JSON report (beside the records file unless --out
says where), prints `format_report`'s text and exits 1 when fewer questions agree than
--min-agreement requires (all of them by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click

from adapters.divergence import DEFAULT_TIE_MARGIN
from adapters.export import EXPORT_WRITER, export_peft
from adapters.fuse import FUSE_WRITER, fuse_adapter
from adapters.hub import HubError, check_repo_id, hub_token, push_folder
from adapters.torch_check import (
    CheckSetup,
    check_report_replaceable,
    format_report,
    run_check,
)
from adapters.torch_side import DEVICES
from eval.harness import CONDITIONS
from eval.records import load_records
from mlx_plamo3.errors import USER_ERRORS
from mlx_plamo3.io import OUTPUT_MARKER, OutputDirectoryError, atomic_write_json, check_replaceable
from mlx_plamo3.loading import names_hub_repo, read_model_args
from mlx_plamo3.lora import read_adapter_config, warn_other_base
from mlx_plamo3.messages import next_step, quoted
from mlx_plamo3.paths import artifact_dir, default_model_dir
from mlx_plamo3.peft import DEFAULT_BASE_MODEL, EXPORT_DTYPES, base_model_of, load_mlx_adapter


def default_results() -> list[Path]:
    """The eval records under artifacts/results that exist, base conditions first."""

    candidates = [artifact_dir("results", f"{c}.json") for c in CONDITIONS]
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

    _, document = read_adapter_config(adapter_dir)
    base = base_model_of(document, base_model)
    if not names_hub_repo(base):
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

    args = read_model_args(base_dir)
    load_mlx_adapter(adapter_dir, args, base_dir, on_other_base)


# ---- `mlx-plamo check-torch` -----------------------------------------------------------------


def default_report_path(results: Path) -> Path:
    return results.with_name(f"{results.stem}.torch-check.json")


@click.command(name="check-torch", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--base",
    required=True,
    help="Base model: a Hugging Face checkpoint directory or a Hub id (org/name).",
)
@click.option(
    "--adapter",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="PEFT adapter directory (from `mlx-plamo export`).",
)
@click.option(
    "--results",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="MLX eval records file (from `mlx-plamo eval`) to compare with.",
)
@click.option(
    "--data",
    default="v2",
    show_default=True,
    help="Dataset recipe name or directory whose eval.jsonl holds the records' prompts.",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="cpu",
    show_default=True,
    help="PyTorch device.",
)
@click.option(
    "--dtype",
    type=click.Choice(EXPORT_DTYPES),
    default="float32",
    show_default=True,
    help="PyTorch dtype of the base weights (bf16 disagreements are often near-ties).",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Run the checkpoint's own modeling code (transformers AutoModel) instead of the "
    "project's PyTorch reference. Only for checkpoints you trust: it executes their code.",
)
@click.option(
    "--mlx-adapter",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="MLX adapter the records were made with, to confirm the PEFT adapter is its export "
    "[the records' summary 'adapter', if it exists].",
)
@click.option(
    "--fewshot/--no-fewshot",
    default=None,
    help="Insert the study's 2-shot turns [as the records' eval did: its summary's "
    "decoding.fewshot].",
)
@click.option(
    "--min-agreement",
    type=click.IntRange(min=0),
    help="Fail (exit 1) when fewer questions agree [all of them].",
)
@click.option(
    "--tie-margin",
    type=float,
    default=DEFAULT_TIE_MARGIN,
    show_default=True,
    help="A disagreement whose logit margin is at most this is reported as a near-tie.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Compare only the first N questions of the records (a quick check) [all].",
)
@click.option(
    "--allow-other-base",
    is_flag=True,
    help="Compare even when the adapter or the records were made on another base of the same "
    "shape than --base, with a warning (refused by default: their base weights fingerprint "
    "differs, so disagreements would say nothing about the port).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON report [<results>.torch-check.json beside the results file].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def check_torch_command(
    base: str,
    adapter: Path,
    results: Path,
    data: str,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    mlx_adapter: Path | None,
    fewshot: bool | None,
    min_agreement: int | None,
    tie_margin: float,
    limit: int | None,
    allow_other_base: bool,
    out: Path | None,
    quiet: bool,
) -> None:
    """Rerun the MLX eval in PyTorch with the PEFT adapter and compare, question by question.

    Exits 1 when fewer than --min-agreement questions produce identical outputs."""

    out = out or default_report_path(results)
    try:  # before the check runs: it takes minutes
        check_report_replaceable(out, results)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    setup = CheckSetup(
        base=base,
        adapter=adapter,
        results=results,
        data=data,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        mlx_adapter=mlx_adapter,
        fewshot=fewshot,
        tie_margin=tie_margin,
        limit=limit,
        allow_other_base=allow_other_base,
    )
    try:
        report = run_check(setup, progress=not quiet)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    required = report["n"] if min_agreement is None else min_agreement
    report["min_agreement"] = required
    report["passed"] = report["agree"] >= required
    atomic_write_json(out, report)
    click.echo(format_report(report, required))
    click.echo(f"report written to {out}")
    if report["passed"] and report["mlx_adapter_checked"]:
        publish = f"mlx-plamo export --adapter {quoted(report['mlx_adapter_checked'])}"
        click.echo(next_step(f"{publish} --push-to-hub <user>/<name>  (publish it)"))
    if not report["passed"]:
        click.echo(
            f"check-torch FAILED: {report['agree']}/{report['n']} agree, {required} required",
            err=True,
        )
        raise SystemExit(1)
