"""The MLflow names the trainer writes and the report reads: one home, so neither guesses.

Written (by `train`): runs go to the experiment `DEFAULT_EXPERIMENT`; every optimizer step logs
`LOSS` and `EXAMPLES_SEEN` (next to lr, grad_norm and the throughput figures, which the report
does not read); every checkpoint eval logs `checkpoint_eval_metrics(summary)`: one metric per
rate of `eval.scoring.RATE_KEYS`, named by `eval_metric_key` as `eval_<rate>` (seed scoring)
and `eval_strict_<rate>` (strict scoring). These names are stored in existing MLflow databases,
so they never change.

Read (by the report): exactly these names; other metrics are not drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eval.scoring import RATE_KEYS

DEFAULT_EXPERIMENT = "plamo3-tool-calling"
LOSS = "loss"
EXAMPLES_SEEN = "examples_seen"
EVAL_PREFIX = "eval_"
STRICT_PREFIX = "strict_"


def eval_metric_key(rate: str, strict: bool = False) -> str:
    """The trainer's key for a checkpoint-eval rate: `eval_<rate>` or `eval_strict_<rate>`."""
    if rate not in RATE_KEYS:
        raise ValueError(f"unknown rate {rate!r}; expected one of {RATE_KEYS}")
    return f"{EVAL_PREFIX}{STRICT_PREFIX if strict else ''}{rate}"


# The trainer's checkpoint-eval keys -> (rate key, strict?).
TRAINER_EVAL_KEYS: dict[str, tuple[str, bool]] = {
    eval_metric_key(rate, strict): (rate, strict) for strict in (False, True) for rate in RATE_KEYS
}


def checkpoint_eval_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a checkpoint eval logs: the summary's rates, and its `strict` block's when
    present, under `eval_metric_key`; rates that are None (no cases) are left out."""
    metrics = {eval_metric_key(rate): summary.get(rate) for rate in RATE_KEYS}
    strict = summary.get("strict")
    if isinstance(strict, dict):
        metrics |= {eval_metric_key(rate, strict=True): strict.get(rate) for rate in RATE_KEYS}
    return {k: v for k, v in metrics.items() if v is not None}


def classify_eval_key(key: str) -> tuple[str, bool] | None:
    """(rate key, strict?) for a checkpoint-eval metric key, else None."""
    return TRAINER_EVAL_KEYS.get(key)


def wanted_key(key: str) -> bool:
    """Whether the report reads this metric's history: the loss, examples seen, eval rates."""
    return key in (LOSS, EXAMPLES_SEEN) or key in TRAINER_EVAL_KEYS
