"""BFCL records scored: each row's verdict by BFCL's checker, and the per-category summary.

A BFCL records row (written by `mlx-plamo eval --suite bfcl`) carries `suite` "bfcl", its
`category` and BFCL `id`, the BFCL function docs (`functions`) and the possible answers
(`ground_truth`, None for irrelevance) next to the usual `kind`, `question`, `gold` (one
acceptable answer as text), `pred`, `pred_ids` and `tools`. Everything here is recomputed from
`pred` and those fields alone, so a records file edited by hand rescores as it stands.

Per category: accuracy by BFCL's verdict with its 95% Wilson interval; the "fair" accuracy
beside it (`eval.bfcl_checker`: a one-to-one matching of parallel calls in any order); and the
frozen eval's figures where they apply: the parse rate (a call could be read from the reply)
on call categories, the false-call rate (a call was emitted) on irrelevance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eval.bfcl import NOCALL_CATEGORIES, is_bfcl_row
from eval.bfcl_checker import check_calls, parse_calls
from eval.scoring import describe_rate, wilson_interval


def row_verdict(row: Mapping[str, Any]) -> dict[str, Any]:
    """{id, category, parsed, correct, fair, failed_check, detail} of one BFCL records row."""
    calls = parse_calls(row["pred"])
    verdict = check_calls(row["category"], row["functions"], row.get("ground_truth"), calls)
    return {
        "id": row.get("id"),
        "category": row["category"],
        "parsed": bool(calls),
        "correct": verdict.correct,
        "fair": verdict.fair,
        "failed_check": verdict.failed_check,
        "detail": verdict.detail,
    }


def rate(k: int, n: int) -> dict[str, Any]:
    return {
        "k": k,
        "n": n,
        "rate": k / n if n else None,
        "interval": list(wilson_interval(k, n)) if n else None,
    }


def summarize_verdicts(verdicts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary of one category's (or all) verdicts."""
    n = len(verdicts)
    calls = [v for v in verdicts if v["category"] not in NOCALL_CATEGORIES]
    no_calls = [v for v in verdicts if v["category"] in NOCALL_CATEGORIES]
    return {
        "accuracy": rate(sum(v["correct"] for v in verdicts), n),
        "fair_accuracy": rate(sum(v["fair"] for v in verdicts), n),
        "parse_rate": rate(sum(v["parsed"] for v in calls), len(calls)) if calls else None,
        "false_call_rate": rate(sum(v["parsed"] for v in no_calls), len(no_calls))
        if no_calls
        else None,
    }


def summarize_bfcl(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """{"categories": {category: summary}, "overall": summary, "verdicts": [...]} of the BFCL
    rows among `rows` (other rows are left out)."""
    verdicts = [row_verdict(row) for row in rows if is_bfcl_row(row)]
    order = list(dict.fromkeys(v["category"] for v in verdicts))
    return {
        "categories": {
            category: summarize_verdicts([v for v in verdicts if v["category"] == category])
            for category in order
        },
        "overall": summarize_verdicts(verdicts) if verdicts else None,
        "verdicts": verdicts,
    }


def category_cells(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Per category of the BFCL rows, the cells the report and the model card show: BFCL's
    accuracy as `describe_rate` phrases it, the fair k/n, and the parse or false-call k/n."""
    cells = []
    for category, s in summarize_bfcl(rows)["categories"].items():
        acc, fair = s["accuracy"], s["fair_accuracy"]
        label, other = (
            ("parse", s["parse_rate"]) if s["parse_rate"] else ("false call", s["false_call_rate"])
        )
        cells.append(
            {
                "category": category,
                "accuracy": describe_rate(acc["k"], acc["n"]),
                "fair": f"{fair['k']}/{fair['n']}",
                "other": f"{label} {other['k']}/{other['n']}",
            }
        )
    return cells


def format_bfcl(summary: Mapping[str, Any]) -> str:
    """The per-category table: BFCL accuracy with its interval, fair accuracy, parse or
    false-call rate."""
    lines = [
        f"{'BFCL category':<20}{'accuracy':>9}{'k/n':>10}   95% interval   "
        f"{'fair':>7}   parse / false-call"
    ]
    rows = [*summary["categories"].items()]
    if summary.get("overall") and len(rows) > 1:
        rows.append(("all", summary["overall"]))
    for category, s in rows:
        acc, fair = s["accuracy"], s["fair_accuracy"]
        lo, hi = acc["interval"]
        count = f"{acc['k']}/{acc['n']}"
        extra = [
            f"{label} {s[key]['rate']:.1%}"
            for key, label in (("parse_rate", "parse"), ("false_call_rate", "false-call"))
            if s[key]
        ]
        lines.append(
            f"{category:<20}{acc['rate']:>9.1%}{count:>10}   [{lo:.1%}, {hi:.1%}]   "
            f"{fair['rate']:>7.1%}   {', '.join(extra)}"
        )
    return "\n".join(lines)
