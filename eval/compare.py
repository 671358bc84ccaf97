"""Per-question diff of two evaluation records: which questions flipped on which metric.

Rows are matched by (kind, question). Conditions may use different no-call sets (the study's
v2 used a new strict set), so questions found in only one file are reported, not compared.
Files without questions (the study's leaked eval) are matched by row position instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eval.scoring import RATE_KEYS, ROW_KINDS, Verdict, score_rows
from mlx_plamo3.errors import InputError

# The row kind each metric is measured on (see `passes` for what counts as a pass).
METRIC_KIND: dict[str, str] = {
    "parse_rate": "call",
    "func_name_acc": "call",
    "args_exact_match": "call",
    "false_call_rate": "nocall",
}


def passes(verdict: Verdict, metric: str) -> bool:
    """Pass on one metric; for the false-call rate a pass means no false call."""
    if metric == "parse_rate":
        return verdict.parsed
    if metric == "func_name_acc":
        return verdict.func_name
    if metric == "args_exact_match":
        return verdict.args_exact
    if metric == "false_call_rate":
        return not verdict.false_call
    raise InputError(f"unknown metric {metric!r}; expected one of {RATE_KEYS}")


def has_questions(rows: Sequence[Mapping[str, Any]], label: str) -> bool:
    """Whether every row records its question; an error when only some do (matching the rest by
    position would pair different questions)."""
    missing = [i for i, row in enumerate(rows) if not isinstance(row.get("question"), str)]
    if missing and len(missing) < len(rows):
        raise InputError(
            f"{label}: row {missing[0]} has no 'question' while other rows do; rows are matched "
            "by question, so each needs one"
        )
    return not missing


def keyed_rows(
    rows: Sequence[Mapping[str, Any]], by_question: bool, label: str
) -> dict[tuple[str, str], int]:
    """(kind, question) -> row index; by position ("#i") when questions are not recorded."""
    keys: dict[tuple[str, str], int] = {}
    for index, row in enumerate(rows):
        key = (row["kind"], row["question"] if by_question else f"#{index}")
        if key in keys:
            raise InputError(
                f"{label}: row {index} repeats the {key[0]} question of row {keys[key]}: {key[1]!r}"
            )
        keys[key] = index
    return keys


def compare_rows(
    rows_a: Sequence[Mapping[str, Any]],
    rows_b: Sequence[Mapping[str, Any]],
    mode: str = "study",
    labels: tuple[str, str] = ("A", "B"),
) -> dict[str, Any]:
    """Score both row lists and diff them question by question (JSON-ready dict)."""
    recorded = has_questions(rows_a, labels[0]), has_questions(rows_b, labels[1])
    by_question = all(recorded)
    keys_a = keyed_rows(rows_a, by_question, labels[0])
    keys_b = keyed_rows(rows_b, by_question, labels[1])
    verdicts_a = score_rows(rows_a, mode)
    verdicts_b = score_rows(rows_b, mode)
    matched = [key for key in keys_a if key in keys_b]

    questions = []
    for kind, question in matched:
        ia, ib = keys_a[(kind, question)], keys_b[(kind, question)]
        questions.append(
            {
                "kind": kind,
                "question": _question_text(rows_a[ia], question),
                "index_a": ia,
                "index_b": ib,
                "verdict_a": verdicts_a[ia].to_dict(),
                "verdict_b": verdicts_b[ib].to_dict(),
                "pred_a": rows_a[ia]["pred"],
                "pred_b": rows_b[ib]["pred"],
                "gold_changed": rows_a[ia]["gold"] != rows_b[ib]["gold"],
            }
        )

    metrics = {}
    for metric in RATE_KEYS:
        entries = [q for q in questions if q["kind"] == METRIC_KIND[metric]]
        pass_a = [passes(verdicts_a[q["index_a"]], metric) for q in entries]
        pass_b = [passes(verdicts_b[q["index_b"]], metric) for q in entries]
        metrics[metric] = {
            "kind": METRIC_KIND[metric],
            "n": len(entries),
            "pass_a": sum(pass_a),
            "pass_b": sum(pass_b),
            "pass_to_fail": [
                _flip(q) for q, a, b in zip(entries, pass_a, pass_b, strict=True) if a and not b
            ],
            "fail_to_pass": [
                _flip(q) for q, a, b in zip(entries, pass_a, pass_b, strict=True) if b and not a
            ],
        }

    return {
        "mode": mode,
        "labels": list(labels),
        "matched_by": "question" if by_question else "position",
        "matched": {kind: sum(1 for k, _ in matched if k == kind) for kind in METRIC_KIND.values()},
        "only_in_a": [_unmatched(rows_a[i], key) for key, i in keys_a.items() if key not in keys_b],
        "only_in_b": [_unmatched(rows_b[i], key) for key, i in keys_b.items() if key not in keys_a],
        "metrics": metrics,
        "questions": questions,
    }


def _question_text(row: Mapping[str, Any], key_text: str) -> str:
    return row["question"] if isinstance(row.get("question"), str) else key_text


def _flip(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("kind", "question", "index_a", "index_b")}


def _unmatched(row: Mapping[str, Any], key: tuple[str, str]) -> dict[str, str]:
    return {"kind": key[0], "question": _question_text(row, key[1])}


# ---- text view --------------------------------------------------------------------------------


def _badges(verdict: Mapping[str, Any]) -> str:
    """Call rows: P/F/A per passed metric, "." per failed. No-call rows: "ok" or "CALL"."""
    if verdict["kind"] == "nocall":
        return "CALL" if verdict["false_call"] else "ok"
    flags = (verdict["parsed"], verdict["func_name"], verdict["args_exact"])
    return "".join(mark if ok else "." for mark, ok in zip("PFA", flags, strict=True))


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_comparison(result: Mapping[str, Any], width: int = 100) -> str:
    """The comparison as a readable text report: totals, flips, and a per-question grid."""
    la, lb = result["labels"]
    lines = [
        f"A: {la}",
        f"B: {lb}",
        f"mode: {result['mode']}, matched by {result['matched_by']}: "
        f"{result['matched']['call']} call + {result['matched']['nocall']} no-call questions",
    ]
    for side, key in (("A", "only_in_a"), ("B", "only_in_b")):
        if result[key]:
            counts = {kind: sum(1 for u in result[key] if u["kind"] == kind) for kind in ROW_KINDS}
            kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
            lines.append(f"only in {side}: {kinds} (not compared)")
    gold_changed = sum(1 for q in result["questions"] if q["gold_changed"])
    if gold_changed:
        lines.append(f"warning: gold differs between A and B on {gold_changed} matched questions")
    lines += [
        "",
        f"{'metric (on matched questions)':<32}{'A':>8}{'B':>8}{'pass->fail':>12}"
        f"{'fail->pass':>12}",
    ]
    for metric, m in result["metrics"].items():
        name = metric + (" (pass = no call)" if metric == "false_call_rate" else "")
        if not m["n"]:
            lines.append(f"{name:<32}{'-':>8}{'-':>8}{'-':>12}{'-':>12}")
            continue
        lines.append(
            f"{name:<32}{m['pass_a']:>4}/{m['n']:<3}{m['pass_b']:>4}/{m['n']:<3}"
            f"{len(m['pass_to_fail']):>12}{len(m['fail_to_pass']):>12}"
        )
    for metric, m in result["metrics"].items():
        for direction in ("pass_to_fail", "fail_to_pass"):
            if m[direction]:
                arrow = direction.replace("_to_", " -> ")
                lines += ["", f"{metric} {arrow} ({len(m[direction])}):"]
                lines += [f"  - {_clip(f['question'], width - 4)}" for f in m[direction]]
    lines += ["", "per question (call: P parsed, F func-name, A args-exact; no-call: ok / CALL)"]
    lines.append(f"{'kind':<7}{'A':<6}{'B':<6}question")
    for q in result["questions"]:
        changed = "*" if _badges(q["verdict_a"]) != _badges(q["verdict_b"]) else " "
        lines.append(
            f"{q['kind']:<7}{_badges(q['verdict_a']):<6}{_badges(q['verdict_b']):<5}{changed}"
            f"{_clip(q['question'], width - 19)}"
        )
        if changed == "*":
            lines.append(f"{'':<19}A: {_clip(q['pred_a'], width - 22)}")
            lines.append(f"{'':<19}B: {_clip(q['pred_b'], width - 22)}")
    for side, key in (("A", "only_in_a"), ("B", "only_in_b")):
        if result[key]:
            lines += ["", f"only in {side}:"]
            lines += [f"  [{u['kind']}] {_clip(u['question'], width - 12)}" for u in result[key]]
    return "\n".join(lines)
