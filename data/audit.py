"""The label audit: what the source held, what was dropped and why, and how wrong the seed's
naive no-call label is on this source (trap 2: the seed measured 96% of v1's no-call class)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from data.schema import CALL, DEFERRED_CALL, LABELS, NO_TOOLS, NONSTANDARD_CALL, STRICT_NOCALL


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def label_counts(counter: Mapping[str, int]) -> dict[str, int]:
    """Every label, zeros included, in a fixed order (stable audit files)."""
    return {label: int(counter.get(label, 0)) for label in LABELS}


def naive_nocall_breakdown(labels: Mapping[str, int]) -> dict[str, Any]:
    """What the seed's first-reply rule calls "no-call", split by what it really is."""
    deferred = int(labels.get(DEFERRED_CALL, 0))
    nonstandard = int(labels.get(NONSTANDARD_CALL, 0))
    strict = int(labels.get(STRICT_NOCALL, 0))
    total = deferred + nonstandard + strict
    return {
        "total": total,
        DEFERRED_CALL: deferred,
        NONSTANDARD_CALL: nonstandard,
        STRICT_NOCALL: strict,
        "deferred_share": share(deferred, total),
        "really_a_call_share": share(deferred + nonstandard, total),
    }


def format_audit(audit: dict[str, Any]) -> str:
    """The audit as the few lines a person reads after a build."""
    rows = audit["rows"]
    lines = [
        f"recipe {audit['recipe']} (seed {audit['seed']})",
        f"source rows {rows['source']:,}  parsed {rows['parsed']:,}  "
        f"skipped {rows['skipped_total']:,}  duplicates removed {rows['duplicates_removed']:,}  "
        f"unique queries {rows['unique_queries']:,}",
    ]
    if rows["skipped"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in rows["skipped"].items())
        lines.append(f"  skipped by reason: {reasons}")
    for title, key in (("all parsed rows", "labels_all_rows"), ("unique queries", "labels")):
        counts = audit[key]
        lines.append(
            f"{title}: call {counts[CALL]:,}  strict no-call {counts[STRICT_NOCALL]:,}  "
            f"deferred call {counts[DEFERRED_CALL]:,}  nonstandard call "
            f"{counts[NONSTANDARD_CALL]:,}  no tools {counts[NO_TOOLS]:,}"
        )
    naive = audit["naive_nocall"]
    lines.append(
        f"naive (first-reply) no-call class: {naive['total']:,}, of which deferred calls "
        f"{_pct(naive['deferred_share'])}, really calls {_pct(naive['really_a_call_share'])}"
    )
    frozen = audit["frozen_eval"]
    lines.append(
        f"frozen eval: {frozen['questions']} questions, tools from source {frozen['from_source']}, "
        f"synthesized {frozen['synthesized']}, missing {frozen['missing']}"
    )
    if audit.get("fresh_eval"):
        built = audit["fresh_eval"]["built"]
        lines.append(f"fresh eval: {built['call']} call + {built['nocall']} no-call")
    train = audit["train"]
    lines.append(
        f"train: {train['built']['call']:,} call + {train['built']['nocall']:,} no-call "
        f"(asked {train['requested']['call']:,} + {train['requested']['nocall']:,}, "
        f"available {train['available']['call']:,} + {train['available']['nocall']:,})"
    )
    if audit["recipe"] == "v1":
        lines.append(
            f"  v1 no-call rows that are really deferred calls: "
            f"{_pct(train['nocall_deferred_share'])} (the seed measured 96%)"
        )
    lines.append(f"leakage: {audit['leakage']['overlap']} overlapping queries")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def counter_dict(counter: Counter[str]) -> dict[str, int]:
    """A Counter as a plain dict sorted by key (stable audit files)."""
    return {key: counter[key] for key in sorted(counter)}
