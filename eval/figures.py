"""The report's figures as PNG bytes: the four rates per condition, training loss per run, and
checkpoint evals over training (recall vs precision on call cases, 1 - false-call rate on no-call
cases).

`draw_figures` draws all three by their file names (`FIGURE_NAMES`), None for a figure with
nothing to draw. Curves run against examples seen when every plotted step of every run has that
value (the study's x axis), else against optimizer steps; loss curves longer than `SMOOTH_ABOVE`
steps get a centred moving average over the faint per-step values. Drawn with matplotlib's
object API (no pyplot: no global state, no GUI backend) and saved without a timestamp or
software tag, so the same inputs give the same bytes.

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from eval.conditions import Condition
from eval.metric_keys import LOSS
from eval.scoring import RATE_KEYS
from eval.training_history import Run, checkpoint_points, examples_by_step

METRIC_LABELS = {
    "parse_rate": "parse",
    "func_name_acc": "func-name",
    "args_exact_match": "args-exact",
    "false_call_rate": "false-call",
}
METRIC_COLORS = {
    "parse_rate": "#8da0cb",
    "func_name_acc": "#66c2a5",
    "args_exact_match": "#1b7837",
    "false_call_rate": "#d6604d",
}
# Loss curves longer than this get a smoothed line over the faint per-step values.
SMOOTH_ABOVE = 50
FIG_METRICS = "metrics_by_condition.png"
FIG_LOSS = "training_loss.png"
FIG_CHECKPOINTS = "checkpoint_evals.png"
FIGURE_NAMES = (FIG_METRICS, FIG_LOSS, FIG_CHECKPOINTS)


def draw_figures(
    conditions: Sequence[Condition], runs: Sequence[Run], mode: str
) -> dict[str, bytes | None]:
    """File name -> PNG bytes, or None where there is nothing to draw."""
    return {
        FIG_METRICS: figure_metrics(conditions, mode) if conditions else None,
        FIG_LOSS: figure_loss(runs),
        FIG_CHECKPOINTS: figure_checkpoints(runs, mode),
    }


def use_examples_axis(runs: Sequence[Run], steps_of: Mapping[str, Sequence[int]]) -> bool:
    """Plot against examples seen only when every plotted step of every run has a value
    (the study's x axis); otherwise optimizer steps, so no run is drawn on a different axis."""
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
    series = [run for run in runs if LOSS in run.histories]
    if not series:
        return None
    steps_of = {run.run_id: [s for s, _ in run.histories.get(LOSS, [])] for run in runs}
    by_examples = use_examples_axis(runs, steps_of)
    fig = _figure(9, 4.2)
    ax = fig.add_subplot()
    colors = _run_colors(runs)
    for run in series:
        points = run.histories[LOSS]
        examples = examples_by_step(run)
        xs = [examples[s] if by_examples else s for s, _ in points]
        ys = [v for _, v in points]
        label = run.name
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
