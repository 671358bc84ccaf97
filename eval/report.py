"""`mlx-plamo report`: a self-contained HTML report with PNG figures.

Sources: every evaluation records file in a results folder (rescored here with the same scoring
code as `mlx-plamo score`, so badges and rates cannot drift apart) and, optionally, the training
runs of an MLflow experiment (loss curves and checkpoint evals). The HTML embeds its figures as
data URIs and carries its CSS and a few lines of JS inline, so it opens offline; predictions are
untrusted model output and reach the page only through Jinja's autoescaping.

Imports stay light: matplotlib and mlflow are imported only when a report is built.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from eval.compare import METRIC_KIND, passes
from eval.records import Records, RecordsError, load_records
from eval.scoring import (
    MODES,
    RATE_KEYS,
    Verdict,
    describe_rate,
    score_rows,
    summarize,
    summary_mismatches,
)
from mlx_plamo3.errors import InputError
from mlx_plamo3.io import atomic_write_bytes, atomic_write_text
from mlx_plamo3.messages import next_step, quoted
from mlx_plamo3.paths import artifact_dir, mlflow_uri

DEFAULT_EXPERIMENT = "plamo3-tool-calling"
DEFAULT_TITLE = "PLaMo 3 tool-calling LoRA: evaluation report"
TEMPLATE = "report_template.html.jinja"
# Conditions that come first, in this order; all others follow by name.
LEADING_CONDITIONS = ("base", "base-fewshot")
METRIC_LABELS = {
    "parse_rate": "parse",
    "func_name_acc": "func-name",
    "args_exact_match": "args-exact",
    "false_call_rate": "false-call",
}
# Short names so a cell's three badges fit on one line of a narrow explorer column.
BADGE_LABELS = {"parse_rate": "parse", "func_name_acc": "name", "args_exact_match": "args"}
METRIC_COLORS = {
    "parse_rate": "#8da0cb",
    "func_name_acc": "#66c2a5",
    "args_exact_match": "#1b7837",
    "false_call_rate": "#d6604d",
}
# Summary fields shown as provenance (the eval command records model, adapter and data).
PROVENANCE_KEYS = ("model", "adapter", "data", "data_sha256", "minutes", "decoding")
# Loss curves longer than this get a smoothed line over the faint per-step values.
SMOOTH_ABOVE = 50
FIG_METRICS = "metrics_by_condition.png"
FIG_LOSS = "training_loss.png"
FIG_CHECKPOINTS = "checkpoint_evals.png"
FIGURE_NAMES = (FIG_METRICS, FIG_LOSS, FIG_CHECKPOINTS)
# Substrings that identify checkpoint-eval metrics in MLflow keys, checked in this order
# (so "args_exact" wins over a generic "parse" in some hypothetical "parsed_args_exact").
EVAL_KEY_PARTS = (
    ("args_exact", "args_exact_match"),
    ("func_name", "func_name_acc"),
    ("false_call", "false_call_rate"),
    ("parse", "parse_rate"),
)


# ---- conditions (records files) ---------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One records file, rescored: `summary` is ours, `stored` the file's own."""

    label: str
    path: Path
    stored: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    verdicts: list[Verdict]


def find_records_files(results: Path, recursive: bool = False) -> list[Path]:
    pattern = "**/*.json" if recursive else "*.json"
    return sorted(p for p in results.glob(pattern) if p.is_file())


def condition_sort_key(label: str) -> tuple[int, str, int, str]:
    """Top-level conditions before those in subfolders; base, base-fewshot, then by name."""
    folder, _, name = label.rpartition("/")
    lead = LEADING_CONDITIONS.index(name) if name in LEADING_CONDITIONS else len(LEADING_CONDITIONS)
    return (1 if folder else 0, folder, lead, name)


def condition_label(records: Records, results: Path) -> str:
    """The summary's condition, prefixed by the subfolder for files below the results folder
    (the seed's leaked-eval/ reuses the names base, base-fewshot and lora)."""
    folder = records.path.parent.relative_to(results).as_posix()
    return records.condition if folder == "." else f"{folder}/{records.condition}"


def unique_labels(labels: Sequence[str], paths: Sequence[Path]) -> list[str]:
    """Labels made unique by appending the file name where two files share a condition."""
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    return [
        f"{label} ({path.name})" if seen[label] > 1 else label
        for label, path in zip(labels, paths, strict=True)
    ]


def load_conditions(
    results: Path, mode: str = "seed", recursive: bool = False
) -> tuple[list[Condition], list[str]]:
    """Rescored conditions in report order, and a note for each JSON file that is not records."""
    loaded: list[Records] = []
    skipped: list[str] = []
    for path in find_records_files(results, recursive):
        try:
            loaded.append(load_records(path))
        except RecordsError as exc:
            skipped.append(str(exc))
    labels = unique_labels([condition_label(r, results) for r in loaded], [r.path for r in loaded])
    conditions = [
        Condition(
            label=label,
            path=records.path,
            stored=records.summary,
            summary=summarize(
                records.rows, mode, condition=label, minutes=records.summary.get("minutes")
            ),
            rows=records.rows,
            verdicts=score_rows(records.rows, mode),
        )
        for label, records in zip(labels, loaded, strict=True)
    ]
    conditions.sort(key=lambda c: condition_sort_key(c.label))
    return conditions, skipped


def format_rate_cell(summary: Mapping[str, Any], key: str) -> dict[str, str]:
    """A table cell: the rate, k/n with its 95% Wilson interval, and an honest hover text."""
    k, n = summary["counts"][key]
    if not n:
        return {"rate": "–", "detail": "no cases", "title": "no cases"}
    lo, hi = summary["intervals"][key]
    return {
        "rate": f"{k / n:.1%}",
        "detail": f"{k}/{n} · 95% CI {lo:.1%}–{hi:.1%}",
        "title": describe_rate(k, n),
    }


def provenance(condition: Condition, results: Path) -> dict[str, str]:
    """The summary's model / adapter / data / timing fields that are present, as text."""
    out = {"file": condition.path.relative_to(results).as_posix()}
    for key in PROVENANCE_KEYS:
        value = condition.stored.get(key)
        if value is None or value == "":
            continue
        if key == "data_sha256" and isinstance(value, str):
            value = value[:12]
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        out[key] = str(value)
    return out


# ---- the per-question explorer ----------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    pred: str
    ok: bool
    badges: list[tuple[str, bool]]
    reason: str


@dataclass
class Question:
    kind: str
    question: str
    gold: str
    gold_varies: bool = False
    cells: list[Cell | None] = field(default_factory=list)

    @property
    def disagree(self) -> bool:
        """Conditions differ on the main pass (args-exact, or no false call)."""
        return len({c.ok for c in self.cells if c is not None}) > 1


def cell_badges(verdict: Verdict) -> list[tuple[str, bool]]:
    """(label, passed) per metric of the row's kind, as `compare` defines a pass."""
    keys = [k for k in RATE_KEYS if METRIC_KIND[k] == verdict.kind]
    if verdict.kind == "nocall":
        return [("no call" if not verdict.false_call else "false call", not verdict.false_call)]
    return [(BADGE_LABELS[k], passes(verdict, k)) for k in keys]


def question_key(row: Mapping[str, Any], index: int) -> tuple[str, str]:
    """(kind, question); rows without a question (the seed's leaked eval) match by position."""
    question = row.get("question")
    return (row["kind"], question if isinstance(question, str) else f"#{index}")


def explorer_questions(conditions: Sequence[Condition]) -> list[Question]:
    """One entry per distinct question across conditions, call questions first, each in order
    of first appearance; a condition that did not ask a question has no cell there."""
    table: dict[tuple[str, str], Question] = {}
    for position, condition in enumerate(conditions):
        for index, (row, verdict) in enumerate(
            zip(condition.rows, condition.verdicts, strict=True)
        ):
            key = question_key(row, index)
            entry = table.get(key)
            if entry is None:
                text = (
                    key[1]
                    if not key[1].startswith("#")
                    else f"(question not recorded; row {index})"
                )
                entry = Question(key[0], text, row["gold"], cells=[None] * len(conditions))
                table[key] = entry
            elif entry.gold != row["gold"]:
                entry.gold_varies = True
            # Main pass: args-exact on call rows, no false call on no-call rows.
            ok = verdict.args_exact if verdict.kind == "call" else not verdict.false_call
            entry.cells[position] = Cell(row["pred"], ok, cell_badges(verdict), verdict.reason)
    entries = list(table.values())
    return [q for q in entries if q.kind == "call"] + [q for q in entries if q.kind == "nocall"]


# ---- MLflow ------------------------------------------------------------------------------------


@dataclass
class Run:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    # metric key -> [(step, value)], sorted by step, one value per step (the last logged)
    histories: dict[str, list[tuple[int, float]]]


@dataclass
class Training:
    uri: str
    experiment: str
    runs: list[Run]
    message: str | None = None  # why there is nothing to show, when there is not


def classify_eval_key(key: str) -> tuple[str, bool] | None:
    """(rate key, strict?) for a checkpoint-eval metric key, else None."""
    low = key.lower()
    for part, rate in EVAL_KEY_PARTS:
        if part in low:
            return rate, "strict" in low
    return None


def is_loss_key(key: str) -> bool:
    return "loss" in key.lower() and classify_eval_key(key) is None


def examples_key(keys: Iterable[str]) -> str | None:
    """The metric holding examples seen per step: `examples_seen`, else any "examples" key."""
    keys = sorted(keys)
    if "examples_seen" in keys:
        return "examples_seen"
    return next((k for k in keys if "examples" in k.lower()), None)


def wanted_key(key: str) -> bool:
    return is_loss_key(key) or classify_eval_key(key) is not None or "examples" in key.lower()


def dedupe_history(points: Iterable[tuple[int, int, float]]) -> list[tuple[int, float]]:
    """(step, timestamp, value) -> [(step, value)] keeping the last value logged at each step
    (a resumed run may log a step again)."""
    by_step: dict[int, float] = {}
    for step, _, value in sorted(points):
        by_step[step] = value
    return sorted(by_step.items())


def sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def read_training(uri: str, experiment: str) -> Training:
    """The experiment's runs with their loss, examples and checkpoint-eval histories.

    Never fails: a missing store, a missing experiment or an unreadable store becomes a
    message in the report. A missing sqlite file is not created (MLflow would create it)."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return Training(uri, experiment, [], f"No MLflow store at {db}, so no training curves.")
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            message = f"The MLflow store {uri} has no experiment '{experiment}'."
            return Training(uri, experiment, [], message)
        runs = []
        for info in client.search_runs(
            [found.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000
        ):
            histories = {}
            for key in sorted(info.data.metrics):
                if wanted_key(key):
                    history = client.get_metric_history(info.info.run_id, key)
                    histories[key] = dedupe_history((m.step, m.timestamp, m.value) for m in history)
            runs.append(
                Run(
                    run_id=info.info.run_id,
                    name=info.info.run_name or info.info.run_id[:8],
                    status=info.info.status,
                    params=dict(info.data.params),
                    histories=histories,
                )
            )
    except Exception as exc:
        # Any store failure (MlflowException, a file that is not a database, ...) costs the
        # training section only, never the rest of the report.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Training(uri, experiment, [], f"Could not read the MLflow store {uri}: {first_line}")
    if not runs:
        return Training(uri, experiment, [], f"Experiment '{experiment}' has no runs yet.")
    return Training(uri, experiment, runs)


def examples_by_step(run: Run) -> dict[int, float]:
    key = examples_key(run.histories)
    return dict(run.histories[key]) if key else {}


def as_fraction(values: Sequence[float], key: str = "") -> list[float]:
    """Rates logged as percentages (a key naming pct/percent, or any value above 1) are
    scaled to fractions."""
    percent = any(part in key.lower() for part in ("pct", "percent")) or any(v > 1 for v in values)
    return [v / 100 for v in values] if percent else list(values)


@dataclass(frozen=True)
class CheckpointPoint:
    step: int
    examples: float | None
    rates: dict[str, float]  # rate key -> fraction

    @property
    def recall(self) -> float | None:
        """Args-exact over all call cases."""
        return self.rates.get("args_exact_match")

    @property
    def precision(self) -> float | None:
        """Of the calls emitted on call cases, the share exactly right: args-exact / parse
        (both rates are over the same call cases). None when no call was emitted."""
        parse, exact = self.rates.get("parse_rate"), self.rates.get("args_exact_match")
        if parse is None or exact is None or parse <= 0:
            return None
        return min(1.0, exact / parse)

    @property
    def nocall_precision(self) -> float | None:
        """1 - false-call rate: the share of no-call cases answered without a call."""
        false_call = self.rates.get("false_call_rate")
        return None if false_call is None else 1.0 - false_call


def eval_keys(run: Run, mode: str) -> dict[str, str]:
    """rate key -> the run's metric key for it; strict mode prefers strict keys and falls
    back to seed-mode keys when the run logged none."""
    by_variant: dict[bool, dict[str, str]] = {False: {}, True: {}}
    for key in sorted(run.histories):
        found = classify_eval_key(key)
        if found is not None:
            by_variant[found[1]].setdefault(found[0], key)
    if mode == "strict" and by_variant[True]:
        return by_variant[True]
    return by_variant[False] or by_variant[True]


def checkpoint_points(run: Run, mode: str = "seed") -> list[CheckpointPoint]:
    keys = eval_keys(run, mode)
    columns: dict[str, dict[int, float]] = {}
    for rate, key in keys.items():
        steps = [step for step, _ in run.histories[key]]
        values = as_fraction([value for _, value in run.histories[key]], key)
        columns[rate] = dict(zip(steps, values, strict=True))
    steps = sorted({step for column in columns.values() for step in column})
    examples = examples_by_step(run)
    return [
        CheckpointPoint(
            step,
            examples.get(step),
            {rate: column[step] for rate, column in columns.items() if step in column},
        )
        for step in steps
    ]


def use_examples_axis(runs: Sequence[Run], steps_of: Mapping[str, Sequence[int]]) -> bool:
    """Plot against examples seen only when every plotted step of every run has a value
    (the seed's x axis); otherwise optimizer steps, so no run is drawn on a different axis."""
    for run in runs:
        examples = examples_by_step(run)
        if any(step not in examples for step in steps_of.get(run.run_id, ())):
            return False
    return any(steps_of.values())


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average; the window shrinks at the ends. Centred so the smoothed curve
    does not lag the raw one (an exponential average drawn against step would)."""
    half = max(0, window // 2)
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - half) : i + half + 1]
        out.append(sum(chunk) / len(chunk))
    return out


# ---- figures -----------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    # The object API: no pyplot, so no global state and no GUI backend is touched.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig


def png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _percent_axis(ax: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, 1.08)
    ax.grid(axis="y", alpha=0.3)


def short_percent(rate: float) -> str:
    """92.5% stays 92.5%, 100.0% becomes 100%."""
    text = f"{rate * 100:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def figure_metrics(conditions: Sequence[Condition], mode: str) -> bytes:
    """Grouped bars: the four rates per condition with 95% Wilson intervals as error bars."""
    fig = _figure(max(7.0, 1.5 * len(conditions) + 2), 4.4)
    ax = fig.add_subplot()
    width = 0.8 / len(RATE_KEYS)
    for m, key in enumerate(RATE_KEYS):
        xs, heights, lows, highs = [], [], [], []
        for c, condition in enumerate(conditions):
            k, n = condition.summary["counts"][key]
            if not n:
                continue
            lo, hi = condition.summary["intervals"][key]
            rate = k / n
            xs.append(c + (m - 1.5) * width)
            heights.append(rate)
            lows.append(rate - lo)
            highs.append(hi - rate)
        label = METRIC_LABELS[key] + (" (lower is better)" if key == "false_call_rate" else "")
        bars = ax.bar(xs, heights, width, label=label, color=METRIC_COLORS[key])
        ax.errorbar(xs, heights, yerr=[lows, highs], fmt="none", ecolor="#333", lw=0.8, capsize=2)
        # A white box keeps the value readable where the interval's whisker crosses it.
        ax.bar_label(
            bars,
            labels=[short_percent(h) for h in heights],
            fontsize=6.5,
            padding=2,
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85},
        )
    ax.set_xticks(range(len(conditions)), [c.label for c in conditions], fontsize=8)
    _percent_axis(ax)
    ax.set_ylim(0, 1.15)
    ax.set_title(f"Four metrics per condition ({mode} scoring; bars: 95% Wilson intervals)")
    ax.legend(fontsize=8, ncols=4, loc="upper left")
    return png_bytes(fig)


def figure_loss(runs: Sequence[Run]) -> bytes | None:
    """Training loss per run (thin: per step; thick: moving average)."""
    series = [(run, key) for run in runs for key in sorted(run.histories) if is_loss_key(key)]
    if not series:
        return None
    steps_of = {
        run.run_id: [s for r, k in series if r is run for s, _ in run.histories[k]] for run in runs
    }
    by_examples = use_examples_axis(runs, steps_of)
    fig = _figure(9, 4.2)
    ax = fig.add_subplot()
    colors = _run_colors(runs)
    many_keys = len({key for _, key in series}) > 1
    for run, key in series:
        points = run.histories[key]
        examples = examples_by_step(run)
        xs = [examples[s] if by_examples else s for s, _ in points]
        ys = [v for _, v in points]
        label = f"{run.name} · {key}" if many_keys else run.name
        color = colors[run.run_id]
        if len(points) > SMOOTH_ABOVE:
            window = 2 * (len(points) // 50) + 1  # about 4% of the run, odd so it centres
            ax.plot(xs, ys, color=color, alpha=0.3, lw=0.8)
            ax.plot(
                xs, moving_average(ys, window), color=color, lw=1.8, label=f"{label} (smoothed)"
            )
        else:
            ax.plot(xs, ys, color=color, lw=1.5, marker="o", ms=3, label=label)
    ax.set_xlabel("examples seen" if by_examples else "optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.set_title("Training loss (MLflow)")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def figure_checkpoints(runs: Sequence[Run], mode: str) -> bytes | None:
    """Recall vs precision over training, from the checkpoint evals: left the call cases
    (recall = args-exact; precision = args-exact / parse), right 1 - false-call rate."""
    points = {run.run_id: checkpoint_points(run, mode) for run in runs}
    plotted = [run for run in runs if points[run.run_id]]
    if not plotted:
        return None
    steps_of = {rid: [p.step for p in pts] for rid, pts in points.items()}
    by_examples = use_examples_axis(plotted, steps_of)
    fig = _figure(11, 4.4)
    left, right = fig.subplots(1, 2, sharex=True, width_ratios=(3, 2))
    colors = _run_colors(runs)
    for run in plotted:
        pts = points[run.run_id]
        color = colors[run.run_id]
        xs = [p.examples if by_examples else p.step for p in pts]
        for attr, style, marker, what in (
            ("recall", "-", "o", "recall (args-exact)"),
            ("precision", "--", "s", "precision of emitted calls"),
        ):
            pairs = [(x, getattr(p, attr)) for x, p in zip(xs, pts, strict=True)]
            pairs = [(x, y) for x, y in pairs if y is not None]
            if pairs:
                left.plot(
                    *zip(*pairs, strict=True),
                    style,
                    marker=marker,
                    ms=4,
                    color=color,
                    label=f"{run.name}: {what}",
                )
        pairs = [(x, p.nocall_precision) for x, p in zip(xs, pts, strict=True)]
        pairs = [(x, y) for x, y in pairs if y is not None]
        if pairs:
            right.plot(
                *zip(*pairs, strict=True),
                ":",
                marker="^",
                ms=4,
                color=color,
                label=f"{run.name}: 1 − false-call",
            )
    for ax, title in (
        (left, "Call cases: recall vs precision"),
        (right, "No-call cases: 1 − false-call rate"),
    ):
        _percent_axis(ax)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("examples seen" if by_examples else "optimizer step")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Checkpoint evals over training ({mode} scoring where logged)")
    return png_bytes(fig)


def _run_colors(runs: Sequence[Run]) -> dict[str, str]:
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
    return {run.run_id: palette[i % len(palette)] for i, run in enumerate(runs)}


# ---- the page ----------------------------------------------------------------------------------


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def run_rows(training: Training, mode: str) -> list[dict[str, Any]]:
    """Per-run summary lines and its checkpoint-eval table for the page."""
    rows = []
    for run in training.runs:
        loss_keys = [k for k in sorted(run.histories) if is_loss_key(k)]
        loss = run.histories[loss_keys[0]] if loss_keys else []
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
    import jinja2

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


def build_report(
    results: Path,
    out: Path,
    *,
    mode: str = "seed",
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
    results = Path(results)
    conditions, skipped = (
        load_conditions(results, mode, recursive) if results.is_dir() else ([], [])
    )
    training = (
        read_training(tracking_uri, experiment)
        if tracking_uri is not None
        else Training("", experiment, [], "MLflow was not read (--no-mlflow).")
    )
    figures: dict[str, bytes | None] = {
        FIG_METRICS: figure_metrics(conditions, mode) if conditions else None,
        FIG_LOSS: figure_loss(training.runs),
        FIG_CHECKPOINTS: figure_checkpoints(training.runs, mode),
    }
    figure_dir = out / "figures"
    for name, png in figures.items():
        if png is None:
            # A figure left from an earlier report would contradict this one.
            (figure_dir / name).unlink(missing_ok=True)
        else:
            atomic_write_bytes(figure_dir / name, png)

    mismatches = {
        c.label: summary_mismatches(c.stored, c.summary) for c in conditions if mode == "seed"
    }
    context = {
        "title": title,
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
        # Only the columns some condition recorded (the seed's summaries have none of them).
        "provenance_keys": [
            key
            for key in ("file", *PROVENANCE_KEYS)
            if any(key in provenance(c, results) for c in conditions)
        ],
        "figures": {name: data_uri(png) for name, png in figures.items() if png is not None},
        "training": training,
        "runs": run_rows(training, mode),
        "smooth_above": SMOOTH_ABOVE,
        "questions": explorer_questions(conditions),
        "labels": [c.label for c in conditions],
    }
    index = out / "index.html"
    atomic_write_text(index, render_html(context))
    notes = [f"skipped {s}" for s in skipped]
    if tracking_uri is not None and training.message:
        notes.append(training.message)
    return Report(index, [c.label for c in conditions], len(training.runs), notes)


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
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="seed",
    show_default=True,
    help="Scoring mode for the table, badges and checkpoint curves.",
)
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
    report = build_report(
        results,
        out,
        mode=mode,
        tracking_uri=uri,
        experiment=experiment,
        title=title,
        recursive=recursive,
    )
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(
        f"report written to {report.index} ({len(report.conditions)} conditions, "
        f"{report.runs} MLflow runs)"
    )
    click.echo(next_step(f"open {quoted(report.index)} in a browser"))
