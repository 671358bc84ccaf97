"""`mlx-plamo data build` and `mlx-plamo data check-leak`."""

from __future__ import annotations

from pathlib import Path

import click

from data.audit import format_audit
from data.build import BuildConfig, build_dataset
from data.call_format import CALL_FORMATS, DEFAULT_CALL_FORMAT
from data.leakage import check_no_leak
from data.recipes import DEFAULT_SEED, DEFAULT_SIZES, RECIPES
from data.sources import DEFAULT_SOURCE
from data.store import TRAIN_FILE, eval_files, load_rows
from data.v3 import DECLINE_BUILT, DECLINE_MINED, DEFAULT_V3_SIZES, DEFERRED, TOOL_RESULT
from mlx_plamo3.errors import USER_ERRORS
from mlx_plamo3.messages import next_step, quoted
from mlx_plamo3.paths import artifact_dir


@click.group(name="data")
def data_group() -> None:
    """Build and check the tool-calling datasets."""


@data_group.command("build")
@click.option(
    "--recipe",
    type=click.Choice(RECIPES),
    required=True,
    help="v1: the study's naive first-reply labels (reproduces trap 2); "
    "v2: first-reply calls plus strict no-calls only; v3: v2 plus tool-adjacent declines, "
    "deferred calls and tool results (see --n-decline ... --n-tool-result).",
)
@click.option(
    "--call-format",
    type=click.Choice(CALL_FORMATS),
    default=DEFAULT_CALL_FORMAT,
    show_default=True,
    help="How assistant calls are written: json, the study's bare JSON object; plamo, PLaMo 3's "
    "own tool-request markup (<|plamo:begin_tool_requests:plamo|>...), which vLLM's and "
    "SGLang's plamo3 tool parsers read. Recorded in the manifest, then the adapter.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    default=(DEFAULT_SOURCE,),
    show_default=True,
    help="Hub dataset id, or a local .json/.jsonl/.parquet file or dataset directory, in raw "
    "glaive or LLaMA-Factory sharegpt format. Repeat to combine several sources.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Output directory [default: {artifact_dir('data')}/<recipe>].",
)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Sampling seed.")
@click.option(
    "--n-call",
    type=click.IntRange(min=0),
    default=None,
    help=f"Call examples to train on [default: v1 {DEFAULT_SIZES['v1'][0]:,}, "
    f"v2 {DEFAULT_SIZES['v2'][0]:,}]. Capped, with a warning, by what the source has.",
)
@click.option(
    "--n-nocall",
    type=click.IntRange(min=0),
    default=None,
    help=f"No-call examples to train on [default: v1 {DEFAULT_SIZES['v1'][1]:,}, "
    f"v2 {DEFAULT_SIZES['v2'][1]:,}]. The v1 defaults reproduce the study's 11,182 examples "
    "with ~45% no-call.",
)
@click.option(
    "--n-decline",
    type=click.IntRange(min=0),
    default=None,
    help=f"v3: glaive's own declines with tools listed, beyond those v2's no-calls hold "
    f"[default: {DEFAULT_V3_SIZES[DECLINE_MINED]}].",
)
@click.option(
    "--n-built-decline",
    type=click.IntRange(min=0),
    default=None,
    help=f"v3: call questions given one unrelated tool instead of theirs, answered with a "
    f"decline in glaive's phrasing [default: {DEFAULT_V3_SIZES[DECLINE_BUILT]}].",
)
@click.option(
    "--n-deferred",
    type=click.IntRange(min=0),
    default=None,
    help=f"v3: conversations where the assistant asks for a missing argument, then calls "
    f"[default: {DEFAULT_V3_SIZES[DEFERRED]}].",
)
@click.option(
    "--n-tool-result",
    type=click.IntRange(min=0),
    default=None,
    help=f"v3: a call, the tool's response and the assistant's answer using it "
    f"[default: {DEFAULT_V3_SIZES[TOOL_RESULT]}].",
)
@click.option(
    "--fresh-eval",
    is_flag=True,
    help="Also draw a fresh eval of the frozen eval's shape (40 call + 12 strict no-call) into "
    "eval_fresh.jsonl, excluded from training.",
)
@click.option(
    "--require-frozen-eval",
    is_flag=True,
    help="Fail if any of the 52 frozen eval questions is not in the source (default: warn, "
    "synthesize call tools from the gold call, and build anyway).",
)
@click.option(
    "--revision", default=None, help="Hub revision (commit, tag or branch) of a hub source."
)
@click.option("--force", is_flag=True, help="Replace an existing non-empty output directory.")
@click.option(
    "--quiet", is_flag=True, help="No progress bars and no audit block (warnings still show)."
)
def build_command(
    recipe: str,
    call_format: str,
    sources: tuple[str, ...],
    out: Path | None,
    seed: int,
    n_call: int | None,
    n_nocall: int | None,
    n_decline: int | None,
    n_built_decline: int | None,
    n_deferred: int | None,
    n_tool_result: int | None,
    fresh_eval: bool,
    require_frozen_eval: bool,
    revision: str | None,
    force: bool,
    quiet: bool,
) -> None:
    """Build train.jsonl, eval.jsonl, audit.json and manifest.json from glaive rows."""

    class_sizes = {
        klass: n
        for klass, n in (
            (DECLINE_MINED, n_decline),
            (DECLINE_BUILT, n_built_decline),
            (DEFERRED, n_deferred),
            (TOOL_RESULT, n_tool_result),
        )
        if n is not None
    }
    if class_sizes and recipe != "v3":
        raise click.UsageError(
            "--n-decline, --n-built-decline, --n-deferred and --n-tool-result "
            "are v3's; pass --recipe v3"
        )
    config = BuildConfig(
        recipe=recipe,
        sources=tuple(sources),
        out=out,
        seed=seed,
        n_call=n_call,
        n_nocall=n_nocall,
        fresh_eval=fresh_eval,
        require_frozen_eval=require_frozen_eval,
        revision=revision,
        force=force,
        progress=not quiet,
        call_format=call_format,
        class_sizes=class_sizes,
    )
    try:
        path, plan = build_dataset(config)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    for warning in plan.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if not quiet:
        click.echo(format_audit(plan.audit, path))
    click.echo(f"wrote {path}")
    data = recipe if path == artifact_dir("data", recipe) else quoted(path)
    click.echo(next_step(f"mlx-plamo train --data {data}"))


@data_group.command("check-leak")
@click.argument("train", type=click.Path(exists=True, path_type=Path))
@click.argument("eval_path", metavar="EVAL", type=click.Path(exists=True, path_type=Path))
def check_leak_command(train: Path, eval_path: Path) -> None:
    """Fail if any EVAL query also occurs in TRAIN (lowercased, whitespace collapsed).

    TRAIN and EVAL are jsonl files; a built dataset directory stands for its train.jsonl
    (as TRAIN) or for its eval.jsonl and eval_fresh.jsonl (as EVAL)."""

    try:
        train_rows = load_rows(train / TRAIN_FILE if train.is_dir() else train)
        eval_paths = eval_files(eval_path) if eval_path.is_dir() else [eval_path]
        if not eval_paths:
            raise click.ClickException(f"{eval_path}: no eval.jsonl in this directory")
        eval_rows = [row for path in eval_paths for row in load_rows(path)]
        for path, rows in ((train, train_rows), (eval_path, eval_rows)):
            if not rows:
                raise click.ClickException(f"{path} holds no rows: there is nothing to check")
        check_no_leak(train_rows, eval_rows)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"no leakage: 0 of {len(eval_rows)} eval queries occur in the {len(train_rows)} "
        "training rows"
    )
    if train.is_dir():
        click.echo(next_step(f"mlx-plamo train --data {quoted(train)}"))
