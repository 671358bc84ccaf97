"""The report `mlx-plamo report` writes: a self-contained HTML page with PNG figures.

The page: the condition table with 95% intervals and provenance (`eval.conditions`), the
figures (`eval.figures`), the training runs and their checkpoint-eval tables from MLflow
(`eval.training_history`), and the per-question explorer (`eval.explorer`). `build_report`
writes `index.html` and `figures/*.png`, figures first and the page last, each atomically, so a
page on disk always has its figures. It writes into a folder only if the folder is empty or
holds an earlier report (`check_report_folder`), never over the user's files. The HTML embeds
its figures as data URIs and carries its CSS and a few lines of JS inline, so it opens offline;
predictions are untrusted model output and reach the page only through Jinja's autoescaping.

Imports stay light: matplotlib and mlflow are imported only when a report is built.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from eval.bfcl import is_bfcl_row
from eval.bfcl_scoring import category_cells
from eval.conditions import (
    PROVENANCE_KEYS,
    Condition,
    format_rate_cell,
    load_conditions,
    provenance,
)
from eval.explorer import explorer_questions
from eval.figures import (
    FIG_CHECKPOINTS,
    FIG_LOSS,
    FIG_METRICS,
    METRIC_LABELS,
    SMOOTH_ABOVE,
    draw_figures,
)
from eval.metric_keys import DEFAULT_EXPERIMENT, LOSS
from eval.scoring import MODES, RATE_KEYS, summary_mismatches
from eval.training_history import Training, checkpoint_points, examples_by_step, read_training
from mlx_plamo3.errors import InputError
from mlx_plamo3.io import atomic_write_bytes, atomic_write_text

DEFAULT_TITLE = "PLaMo 3 tool-calling LoRA: evaluation report"
TEMPLATE = "report_template.html.jinja"
PAGE = "index.html"
FIGURE_DIR = "figures"
# The page's <meta name="generator">: how an earlier report's page is told from the user's.
GENERATOR = "mlx-plamo report"
# An element of every page, also of those written before the generator tag.
PAGE_LANDMARK = 'id="condition-table"'


def is_report_page(path: Path) -> bool:
    text = path.read_text(encoding="utf-8", errors="replace")
    return f'<meta name="generator" content="{GENERATOR}">' in text or PAGE_LANDMARK in text


def check_report_folder(out: Path) -> None:
    """Refuse an output folder holding anything but an earlier report (its page, its figures,
    and temporary files of an interrupted write), which the new report replaces."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")

    def interrupted_write(entry: Path) -> bool:  # atomic_write_bytes' temporary files
        return entry.name.startswith(".") and entry.name.endswith(".tmp")

    figures = {FIG_METRICS, FIG_LOSS, FIG_CHECKPOINTS}
    foreign = []
    for entry in sorted(out.iterdir()):
        if entry.name == PAGE and entry.is_file() and is_report_page(entry):
            continue
        if entry.name == FIGURE_DIR and entry.is_dir():
            foreign += [
                f"{FIGURE_DIR}/{figure.name}"
                for figure in sorted(entry.iterdir())
                if figure.name not in figures and not interrupted_write(figure)
            ]
        elif not interrupted_write(entry):
            foreign.append(entry.name)
    if foreign:
        raise InputError(
            f"{out} holds {len(foreign)} file(s) that mlx-plamo report did not write "
            f"({', '.join(foreign[:6])}); the report would replace or delete them. Choose "
            "another --out, or move them away."
        )


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def run_rows(training: Training, mode: str) -> list[dict[str, Any]]:
    """Per-run summary lines and its checkpoint-eval table for the page."""
    rows = []
    for run in training.runs:
        loss = run.histories.get(LOSS, [])
        examples = examples_by_step(run)
        rows.append(
            {
                "name": run.name,
                "run_id": run.run_id,
                "status": run.status,
                "data": run.params.get("data", ""),
                "steps": loss[-1][0] if loss else "",
                "examples": _number(examples[max(examples)]) if examples else "",
                "final_loss": f"{loss[-1][1]:.4f}" if loss else "",
                "checkpoints": [
                    {
                        "step": p.step,
                        "examples": _number(p.examples) if p.examples is not None else "",
                        **{METRIC_LABELS[k]: _pct(p.rates.get(k)) for k in RATE_KEYS},
                        "recall": _pct(p.recall),
                        "precision": _pct(p.precision),
                        "nocall_precision": _pct(p.nocall_precision),
                    }
                    for p in checkpoint_points(run, mode)
                ],
            }
        )
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1%}"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"


def render_html(context: Mapping[str, Any]) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        # Predictions are untrusted model output: everything is escaped unless marked safe.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(**context)


@dataclass(frozen=True)
class Report:
    index: Path
    conditions: list[str]
    runs: int
    notes: list[str]  # what the report could not show, and why


def bfcl_rows(conditions: list[Condition]) -> list[dict[str, str]]:
    """The BFCL table: one row per condition with BFCL records and category."""
    return [
        {"condition": c.label, **cells}
        for c in conditions
        if any(map(is_bfcl_row, c.rows))
        for cells in category_cells(c.rows)
    ]


def build_report(
    results: Path,
    out: Path,
    *,
    mode: str = "study",
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    title: str = DEFAULT_TITLE,
    recursive: bool = False,
) -> Report:
    """Write `out/index.html` and `out/figures/*.png`.

    `tracking_uri=None` leaves MLflow out. Figures are written first and the page last, each
    atomically, so a page on disk always has its figures."""
    if mode not in MODES:
        raise InputError(f"unknown scoring mode {mode!r}; expected one of {MODES}")
    results, out = Path(results), Path(out)
    check_report_folder(out)
    conditions, skipped = (
        load_conditions(results, mode, recursive) if results.is_dir() else ([], [])
    )
    training = (
        read_training(tracking_uri, experiment)
        if tracking_uri is not None
        else Training("", experiment, [], "MLflow was not read (--no-mlflow).")
    )
    figures = draw_figures(conditions, training.runs, mode)
    figure_dir = out / FIGURE_DIR
    for name, png in figures.items():
        if png is None:
            # A figure left from an earlier report would contradict this one.
            (figure_dir / name).unlink(missing_ok=True)
        else:
            atomic_write_bytes(figure_dir / name, png)

    mismatches = {
        c.label: summary_mismatches(c.stored, c.summary) for c in conditions if mode == "study"
    }
    context = {
        "title": title,
        "generator": GENERATOR,
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "results": str(results),
        "results_found": results.is_dir(),
        "skipped": skipped,
        "metric_keys": RATE_KEYS,
        "metric_labels": METRIC_LABELS,
        "conditions": [
            {
                "label": c.label,
                "n_call": c.summary["n_call"],
                "n_nocall": c.summary["n_nocall"],
                "cells": {k: format_rate_cell(c.summary, k) for k in RATE_KEYS},
                "provenance": provenance(c, results),
                "mismatch": {
                    k: f"stored {a!r}, rescored {b!r}"
                    for k, (a, b) in mismatches.get(c.label, {}).items()
                },
            }
            for c in conditions
        ],
        # Only the columns some condition recorded (the study's summaries have none of them).
        "provenance_keys": [
            key
            for key in ("file", *PROVENANCE_KEYS)
            if any(key in provenance(c, results) for c in conditions)
        ],
        "figures": {name: data_uri(png) for name, png in figures.items() if png is not None},
        "training": training,
        "runs": run_rows(training, mode),
        "smooth_above": SMOOTH_ABOVE,
        "bfcl": bfcl_rows(conditions),
        "questions": explorer_questions(conditions),
        "labels": [c.label for c in conditions],
    }
    index = out / PAGE
    atomic_write_text(index, render_html(context))
    notes = [f"skipped {s}" for s in skipped]
    if tracking_uri is not None and training.message:
        notes.append(training.message)
    return Report(index, [c.label for c in conditions], len(training.runs), notes)
