"""The label audit: what the source held, what was dropped and why, and how wrong the study's
naive no-call label is on this source (trap 2: the study measured 96% of v1's no-call class)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.schema import CALL, DEFERRED_CALL, LABELS, NO_TOOLS, NONSTANDARD_CALL, STRICT_NOCALL
from data.v3 import (
    CALL_CLASS,
    DECLINE_BUILT,
    DECLINE_MINED,
    DEFERRED,
    NOCALL_CLASS,
    TOOL_RESULT,
    V3_CLASSES,
)

# How the audit block names each label, in LABELS order.
LABEL_WORDS = {
    CALL: "call",
    STRICT_NOCALL: "strict no-call",
    DEFERRED_CALL: "deferred call",
    NONSTANDARD_CALL: "nonstandard call",
    NO_TOOLS: "no tools",
}


# How the audit block names each v3 class.
CLASS_WORDS = {
    CALL_CLASS: "call",
    NOCALL_CLASS: "no-call",
    DECLINE_MINED: "decline (mined)",
    DECLINE_BUILT: "decline (built)",
    DEFERRED: "deferred call",
    TOOL_RESULT: "tool result",
}


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def label_counts(counter: Mapping[str, int]) -> dict[str, int]:
    """Every label, zeros included, in a fixed order (stable audit files)."""
    return {label: int(counter.get(label, 0)) for label in LABELS}


def naive_nocall_breakdown(labels: Mapping[str, int]) -> dict[str, Any]:
    """What the study's first-reply rule calls "no-call", split by what it really is."""
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


def format_audit(audit: dict[str, Any], out: Path | str) -> str:
    """The audit as one block a person reads after a build, each figure said in words."""
    rows = audit["rows"]
    skipped = ", ".join(f"{k} {v:,}" for k, v in rows["skipped"].items()) or "none"
    label_names = ", ".join(f"{LABEL_WORDS[label]}" for label in LABELS)

    def by_label(key: str) -> str:
        return " / ".join(f"{audit[key][label]:,}" for label in LABELS)

    naive, frozen, train = audit["naive_nocall"], audit["frozen_eval"], audit["train"]
    lines = [
        f"dataset {audit['recipe']} (sampling seed {audit['seed']}, calls written as "
        f"{audit['call_format']}) in {out}",
        f"  source    {rows['source']:,} rows read, {rows['parsed']:,} parsed, "
        f"{rows['skipped_total']:,} skipped (by reason: {skipped}), "
        f"{rows['duplicates_removed']:,} duplicate questions removed: "
        f"{rows['unique_queries']:,} unique questions",
        f"  labels    {label_names}",
        f"            all parsed rows: {by_label('labels_all_rows')}",
        f"            unique questions: {by_label('labels')}",
        f"  trap 2    the study's rule (no call in the first reply = no-call) would label "
        f"{naive['total']:,} questions no-call; {_pct(naive['really_a_call_share'])} of "
        f"them do call a tool ({_pct(naive['deferred_share'])} in a later reply, the rest "
        "in glaive's nonstandard form)",
        f"  eval      {frozen['questions']} frozen questions: tools found in the source "
        f"{frozen['from_source']}, synthesized from the gold call {frozen['synthesized']}, "
        f"not in the source {frozen['missing']}",
    ]
    if audit.get("fresh_eval"):
        built = audit["fresh_eval"]["built"]
        lines.append(f"            fresh eval: {built['call']} call + {built['nocall']} no-call")
    lines.append(
        f"  train     {train['built']['call']:,} call + {train['built']['nocall']:,} no-call "
        f"examples (asked for {train['requested']['call']:,} + "
        f"{train['requested']['nocall']:,}; the source has {train['available']['call']:,} + "
        f"{train['available']['nocall']:,} after removing eval questions)"
    )
    if train.get("classes"):
        lines.append(
            "            rows by class: "
            + ", ".join(f"{CLASS_WORDS[k]} {n:,}" for k, n in train["classes"].items())
            + " (v2's no-call rows that decline a request count as mined declines)"
        )
        for klass in V3_CLASSES:
            lines.append(
                f"            {CLASS_WORDS[klass]}: {train['built'][klass]:,} drawn (asked for "
                f"{train['requested'][klass]:,}, the source has {train['available'][klass]:,})"
            )
    if audit["recipe"] == "v1":
        lines.append(
            f"            v1 no-call examples that really call a tool later: "
            f"{_pct(train['nocall_deferred_share'])} (the study measured 96%)"
        )
    lines += [
        f"  leakage   {audit['leakage']['overlap']} eval questions occur in train",
        f"  details   {Path(out) / 'audit.json'} (skipped rows by line, every count above)",
    ]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def counter_dict(counter: Counter[str]) -> dict[str, int]:
    """A Counter as a plain dict sorted by key (stable audit files)."""
    return {key: counter[key] for key in sorted(counter)}
