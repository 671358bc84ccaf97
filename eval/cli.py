"""Command-line entry points of the eval stage: `mlx-plamo eval` (with its `--compare` view),
`mlx-plamo score` and `mlx-plamo report`.

Rescoring a records file never loads a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from data import load_eval_rows, load_rows, resolve_dataset
from data.call_format import CALL_FORMAT_KEY, DEFAULT_CALL_FORMAT, recorded_call_format
from eval.bfcl import BFCL_DIR, CATEGORIES, case_row, is_bfcl_row, load_cases, seen_in_training
from eval.bfcl_scoring import format_bfcl, summarize_bfcl
from eval.compare import compare_rows, format_comparison
from eval.harness import CONDITIONS, EVAL_BATCH_SIZE, STUDY_MAX_NEW_TOKENS, SUITES, run_eval
from eval.metric_keys import DEFAULT_EXPERIMENT
from eval.records import is_records_file, load_records, write_records
from eval.report import DEFAULT_TITLE, build_report
from eval.scoring import (
    MODE_CHOICES,
    RATE_KEYS,
    canonical_mode,
    describe_rate,
    score_rows,
    summarize,
    summary_mismatches,
)
from mlx_plamo3.errors import USER_ERRORS, InputError
from mlx_plamo3.io import check_file_replaceable, file_sha256
from mlx_plamo3.loading import load, model_reference
from mlx_plamo3.lora import (
    BASE_WEIGHTS_KEY,
    load_adapter,
    model_weights_fingerprint,
    read_adapter_config,
    warn_other_base,
)
from mlx_plamo3.memory import budget
from mlx_plamo3.messages import next_step, quoted
from mlx_plamo3.paths import artifact_dir, default_model_dir, mlflow_uri

MODE_HELP = (
    "study (alias seed): the study's scoring, reproducing its numbers exactly. strict: a call "
    "also needs an 'arguments' object and a listed tool, so echoed tool schemas do not count "
    "as calls."
)


def score_records(path: str | Path, mode: str = "study") -> dict[str, Any]:
    """Rescore a records file: {file, summary, stored_summary, mismatches, verdicts}."""
    records = load_records(path)
    summary = summarize(
        records.rows,
        mode,
        condition=records.condition,
        minutes=records.summary.get("minutes"),
    )
    bfcl = summarize_bfcl(records.rows) if any(map(is_bfcl_row, records.rows)) else None
    return {
        "file": str(records.path),
        "summary": summary,
        "bfcl": bfcl,
        "stored_summary": records.summary,
        # The stored summary is study-mode; a strict rescore is expected to differ.
        "mismatches": summary_mismatches(records.summary, summary)
        if mode == "study" and any(k in records.summary for k in RATE_KEYS)
        else None,
        "verdicts": [
            {"index": i, "question": row.get("question"), **verdict.to_dict()}
            for i, (row, verdict) in enumerate(
                zip(records.rows, score_rows(records.rows, mode), strict=True)
            )
        ],
    }


def format_score(result: Mapping[str, Any]) -> str:
    """The rescored rates as a text table with 95% Wilson intervals."""
    s = result["summary"]
    minutes = f", {s['minutes']} min" if s.get("minutes") is not None else ""
    lines = [
        f"{result['file']}",
        f"condition {s['condition']}, mode {s['mode']}{minutes}: "
        f"{s['n_call']} call + {s['n_nocall']} no-call cases",
        "",
        f"{'metric':<18}{'rate':>8}{'k/n':>9}   95% Wilson interval",
    ]
    notes = []
    for key in RATE_KEYS:
        k, n = s["counts"][key]
        if not n:
            lines.append(f"{key:<18}{'-':>8}{'0/0':>9}   -")
            continue
        lo, hi = s["intervals"][key]
        lines.append(f"{key:<18}{s[key]:>8.1%}{f'{k}/{n}':>9}   [{lo:.1%}, {hi:.1%}]")
        if k in (0, n):
            notes.append(f"{key}: {describe_rate(k, n)}")
    if notes:
        lines += ["", "at the extremes the interval, not the rate, is the claim:"]
        lines += [f"  {note}" for note in notes]
    if s["mode"] == "strict" and not s["strict_tool_check"]:
        lines += ["", "tool membership not checked: the rows do not record the prompt's tools"]
    mismatches = result.get("mismatches")
    if mismatches is not None:
        if mismatches:
            lines += ["", "stored summary DIFFERS from the rescore:"]
            lines += [f"  {k}: stored {a!r}, rescored {b!r}" for k, (a, b) in mismatches.items()]
        else:
            lines += ["", "stored summary: identical to the rescore"]
    if result.get("bfcl"):
        lines += ["", format_bfcl(result["bfcl"])]
    return "\n".join(lines)


def mode_option(help_text: str) -> Callable[[Callable], Callable]:
    """--mode: a scoring mode, its alias resolved (`--mode seed` = `--mode study`)."""
    return click.option(
        "--mode",
        type=click.Choice(MODE_CHOICES),
        callback=lambda _ctx, _param, mode: canonical_mode(mode),
        default="study",
        show_default=True,
        help=help_text,
    )


@click.command(name="score")
@click.argument("records", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@mode_option(MODE_HELP)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table."
)
def score_command(records: Path, mode: str, as_json: bool) -> None:
    """Rescore an evaluation RECORDS file (summary + per-question rows) without a model."""
    try:
        result = score_records(records, mode)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        click.echo(format_score(result))
        click.echo(next_step(f"mlx-plamo report{results_option(records)}"))


def results_option(records: Path) -> str:
    """` --results DIR` for `mlx-plamo report`, empty when the records sit in its default."""
    folder = Path(records).parent
    return (
        ""
        if folder.resolve() == artifact_dir("results").resolve()
        else f" --results {quoted(folder)}"
    )


def bfcl_rows(
    categories: str, data_name: str, per_category: int | None = None
) -> tuple[Path, list[dict], dict | None]:
    """(the BFCL folder, the eval rows of `categories`, what of BFCL the training data of
    `data_name` holds, or None when that dataset is not built)."""
    # Each category once, in the order given.
    names = list(dict.fromkeys(c.strip() for c in categories.split(",") if c.strip()))
    if not names:
        raise InputError(f"--categories {categories!r} names no category")
    cases = load_cases(names, limit_per_category=per_category)
    try:
        train_rows = load_rows(resolve_dataset(data_name) / "train.jsonl")
    except FileNotFoundError:
        train_rows = None
    seen = None if train_rows is None else seen_in_training(cases, train_rows)
    return BFCL_DIR, [case_row(case) for case in cases], seen


def compare_records(a_path: str | Path, b_path: str | Path, mode: str = "study") -> dict[str, Any]:
    """Per-question diff of two records files (for `mlx-plamo eval --compare A B`)."""
    a, b = load_records(a_path), load_records(b_path)
    result = compare_rows(
        a.rows, b.rows, mode, labels=(f"{a.path} ({a.condition})", f"{b.path} ({b.condition})")
    )
    result["files"] = [str(a.path), str(b.path)]
    return result


def print_comparison(result: Mapping[str, Any], as_json: bool = False) -> None:
    """Echo a comparison from `compare_records` as a text report or as JSON."""
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        click.echo(format_comparison(result))


# ---- `mlx-plamo eval` (generation-based evaluation) goes below this line ----------------------


@click.command(name="eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--condition",
    type=click.Choice(CONDITIONS),
    default="lora",
    show_default=True,
    help="base: zero-shot; base-fewshot: the study's 2-shot prompt; lora: with --adapter.",
)
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="LoRA adapter dir.")
@click.option(
    "--model",
    "model_path",
    default=None,
    help=f"MLX model dir [{default_model_dir()}].",
)
@click.option(
    "--data",
    "data_name",
    default="v2",
    show_default=True,
    help="Dataset recipe name or dir holding eval.jsonl (the frozen suite's questions; with "
    "--suite bfcl, its train.jsonl is what 'never seen' is measured against, if present).",
)
@click.option(
    "--suite",
    type=click.Choice(SUITES),
    default="frozen",
    show_default=True,
    help="frozen: the study's 52 questions (40 call + 12 no-call) from --data. bfcl: BFCL v4 "
    "questions with tools never trained on, scored by BFCL's own checker.",
)
@click.option(
    "--categories",
    default=",".join(CATEGORIES),
    show_default=True,
    help="With --suite bfcl: the BFCL categories to run, comma-separated.",
)
@click.option(
    "--per-category",
    type=click.IntRange(min=1),
    help="With --suite bfcl: only the first N questions of each category (a quick look).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Records file [{artifact_dir('results')}/<label>.json].",
)
@click.option("--force", is_flag=True, help="Replace an existing records file.")
@click.option(
    "--label", help="Name of this run in the records and the default file name [condition]."
)
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N questions.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=EVAL_BATCH_SIZE,
    show_default=True,
    help="Prompts generated together (lowered when the memory budget needs it).",
)
@click.option(
    "--memory-limit",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Memory budget in GiB [default: what MLX may use here: Metal's recommended working "
    "set on Apple silicon, else a share of RAM].",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=STUDY_MAX_NEW_TOKENS,
    show_default=True,
    help="New tokens per answer (the study's budget).",
)
@click.option(
    "--no-prefix-reuse", is_flag=True, help="Run every prompt from scratch, like the study."
)
@click.option(
    "--constrain",
    is_flag=True,
    help="Constrain each reply that opens a call ('{' or '[', or PLaMo's markup for an adapter "
    "whose config records that call format) to the row's tool names and their arguments' JSON "
    "Schemas (llguidance); free-text replies stay free.",
)
@click.option(
    "--allow-other-base",
    is_flag=True,
    help="Evaluate an adapter trained on another base of the same shape, with a warning "
    "(refused by default: its base weights fingerprint differs).",
)
@click.option(
    "--compare",
    nargs=2,
    type=click.Path(exists=True, dir_okay=False),
    help="Instead of evaluating, diff two records files question by question.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@mode_option("Scoring mode for --compare.")
def eval_command(
    condition: str,
    adapter: str | None,
    model_path: str | None,
    data_name: str,
    suite: str,
    categories: str,
    per_category: int | None,
    out: Path | None,
    force: bool,
    label: str | None,
    limit: int | None,
    batch_size: int,
    memory_limit: float | None,
    max_new_tokens: int,
    no_prefix_reuse: bool,
    constrain: bool,
    allow_other_base: bool,
    compare: tuple[str, str] | None,
    quiet: bool,
    mode: str,
) -> None:
    """Run the tool-calling evaluation and write records: the frozen 52 questions (40 call + 12
    no-call) by default, or BFCL v4's held-out tools with --suite bfcl."""
    if compare:
        try:
            print_comparison(compare_records(*compare, mode=mode))
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None
        return
    import mlx.core as mx
    from tqdm import tqdm

    if suite != "bfcl" and (per_category or categories != ",".join(CATEGORIES)):
        raise click.UsageError("--categories and --per-category go with --suite bfcl")
    if condition == "lora" and not adapter:
        raise click.UsageError("--condition lora needs --adapter")
    if condition != "lora" and adapter:
        raise click.UsageError(f"--adapter makes no sense with --condition {condition}")
    model_path = model_path or str(default_model_dir())
    if label is not None and (Path(label).name != label or label in ("", ".", "..")):
        raise click.UsageError(f"--label {label!r} must be a plain name, not a path")
    label = label or (condition if suite == "frozen" else f"{suite}-{condition}")
    out = out or artifact_dir("results", f"{label}.json")
    try:
        # before the model loads: the records hold a whole run
        check_file_replaceable(out, is_records_file, "an eval records file", force)
        if suite == "bfcl":
            eval_file, rows, seen = bfcl_rows(categories, data_name, per_category)
        else:
            (eval_file, rows), seen = load_eval_rows(data_name), None
        model, tokenizer = load(model_path)
        base_weights = model_weights_fingerprint(model)
        # how the adapter writes calls (the base conditions answer in the study's json)
        call_format = DEFAULT_CALL_FORMAT
        if adapter:
            call_format = recorded_call_format(read_adapter_config(adapter)[1], adapter)
            load_adapter(model, adapter, warn_other_base(allow_other_base), model_path)
            model.eval()
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    limit_bytes, _ = budget(memory_limit)
    total = min(limit, len(rows)) if limit else len(rows)
    with tqdm(total=total, desc=f"eval {label}", unit="q", disable=quiet) as bar:
        records = run_eval(
            model,
            tokenizer,
            rows,
            condition=label,
            fewshot=condition == "base-fewshot",
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            share_prefix=not no_prefix_reuse,
            progress=bar.update,
            memory_available=limit_bytes - mx.get_active_memory(),
            constrain=constrain,
            call_format=call_format,
        )
    records["summary"] |= {
        "model": model_reference(model_path),
        BASE_WEIGHTS_KEY: base_weights,
        "adapter": str(Path(adapter).resolve()) if adapter else None,
        CALL_FORMAT_KEY: call_format,
        "data": str(eval_file.resolve()),
        "data_sha256": file_sha256(eval_file) if eval_file.is_file() else None,
    }
    if seen is not None:
        records["summary"]["bfcl_seen_in_training"] = seen
    write_records(out, records["summary"], records["rows"])
    click.echo(format_score(score_records(out, "study")))
    if seen is not None:
        click.echo(
            f"never seen, measured: {seen['n_functions_seen']} of {seen['n_functions']} BFCL "
            f"functions and {seen['n_questions_seen']} of {seen['n_cases']} questions also occur "
            f"in {data_name}'s training data"
        )
    click.echo(f"records written to {out}")
    report = f"mlx-plamo report{results_option(out)}"
    if adapter:
        export = f"mlx-plamo export --adapter {quoted(adapter)} --results {quoted(out)}"
        click.echo(next_step(export, report))
    else:
        click.echo(next_step(report))


# ---- `mlx-plamo report` ----------------------------------------------------------------------


@click.command(name="report")
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Folder of evaluation records (*.json) [default: {artifact_dir('results')}].",
)
@click.option(
    "--recursive/--no-recursive",
    default=False,
    show_default=True,
    help="Also read records in subfolders (labelled folder/condition).",
)
@click.option(
    "--mlflow",
    "tracking_uri",
    default=None,
    help=f"MLflow tracking URI [default: {mlflow_uri()}].",
)
@click.option("--no-mlflow", is_flag=True, help="Leave training curves out.")
@click.option(
    "--experiment", default=DEFAULT_EXPERIMENT, show_default=True, help="MLflow experiment name."
)
@mode_option("Scoring mode for the table, badges and checkpoint curves.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Output folder for index.html and figures/ [default: {artifact_dir('reports')}].",
)
@click.option("--title", default=DEFAULT_TITLE, show_default=True, help="Page title.")
def report_command(
    results: Path | None,
    recursive: bool,
    tracking_uri: str | None,
    no_mlflow: bool,
    experiment: str,
    mode: str,
    out: Path | None,
    title: str,
) -> None:
    """Write a self-contained HTML report (index.html) and PNG figures: the condition table
    with 95% intervals, metrics per condition, training loss and checkpoint-eval curves from
    MLflow, and a per-question explorer."""
    results = results if results is not None else artifact_dir("results")
    out = out if out is not None else artifact_dir("reports")
    uri = None if no_mlflow else (tracking_uri or mlflow_uri())
    if not results.is_dir():
        click.echo(
            f"warning: no results folder at {results}; the report has no conditions", err=True
        )
    try:
        report = build_report(
            results,
            out,
            mode=mode,
            tracking_uri=uri,
            experiment=experiment,
            title=title,
            recursive=recursive,
        )
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(
        f"report written to {report.index} ({len(report.conditions)} conditions, "
        f"{report.runs} MLflow runs)"
    )
    click.echo(next_step(f"open {quoted(report.index)} in a browser"))
