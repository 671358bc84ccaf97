"""What `mlx-plamo check-torch` compares against, checked before anything heavy loads.

The MLX side of the check is a records file from `mlx-plamo eval --adapter ...`: each row
carries the generated token ids (`pred_ids`) the PyTorch outputs are compared with, and is
matched by its question to the eval row holding the full prompt; the summary gives the token
budget it was decoded with. Records that cannot be compared this way (a base condition, rows
without token ids, questions the eval rows lack) are refused with a `CheckError` naming the
file and the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.harness import STUDY_MAX_NEW_TOKENS, question_of
from eval.records import Records
from mlx_plamo3.errors import PlamoError


class CheckError(PlamoError, ValueError):
    """The check cannot run: inputs that do not belong together or cannot be read."""


def check_records_have_adapter(records: Records) -> None:
    """Records of a base condition cannot agree with a base + adapter: refuse them."""
    summary = records.summary
    if "adapter" in summary and not summary["adapter"]:
        raise CheckError(
            f"{records.path} has no adapter (condition {records.condition}): check-torch "
            "reruns an adapter's eval; pass the records of `mlx-plamo eval --adapter ...`"
        )


def check_records_unconstrained(records: Records) -> None:
    """Records decoded under the tools' grammar (`eval --constrain`) cannot agree with the plain
    greedy decoding check-torch runs: refuse them."""
    if recorded_decoding(records.summary, "constrained"):
        raise CheckError(
            f"{records.path} was decoded under the tools' constraints (eval --constrain); "
            "check-torch reruns plain greedy decoding, so pass the records of an eval without "
            "--constrain"
        )


def token_ids_of(records: Sequence[Mapping[str, Any]], path: Path) -> list[list[int]]:
    """Each record's generated token ids (`pred_ids`, stop token excluded); an error names the
    file and the first rows without them."""
    missing = [
        i
        for i, record in enumerate(records)
        if not (
            isinstance(record.get("pred_ids"), list)
            and all(isinstance(t, int) for t in record["pred_ids"])
        )
    ]
    if missing:
        rows = ", ".join(str(i) for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise CheckError(
            f"{path}: row(s) {rows}: records without token ids ('pred_ids'): rerun "
            "`mlx-plamo eval` to write records check-torch can compare"
        )
    return [list(record["pred_ids"]) for record in records]


def match_eval_rows(
    records: Sequence[Mapping[str, Any]], eval_rows: Sequence[dict[str, Any]], source: str
) -> list[dict[str, Any]]:
    """The eval row of each record, matched by question; an error names every record question
    the eval rows lack (records do not carry the full prompt, the eval rows do)."""
    by_question: dict[str, dict[str, Any]] = {}
    for row in eval_rows:
        question = question_of(row)
        if question in by_question and by_question[question]["messages"] != row["messages"]:
            raise CheckError(f"{source}: the question {question!r} appears with two prompts")
        by_question[question] = row
    missing_field = [i for i, r in enumerate(records) if not isinstance(r.get("question"), str)]
    if missing_field:
        raise CheckError(f"records rows {missing_field[:8]} have no 'question' to match on")
    missing = [r["question"] for r in records if r["question"] not in by_question]
    if missing:
        shown = "; ".join(repr(q) for q in missing[:5])
        raise CheckError(
            f"{len(missing)} record question(s) are not in {source}: {shown}"
            + (" ..." if len(missing) > 5 else "")
        )
    return [by_question[r["question"]] for r in records]


def recorded_decoding(summary: Mapping[str, Any], key: str) -> Any:
    """A setting the MLX eval recorded in its summary's `decoding`, or None."""
    decoding = summary.get("decoding")
    return decoding.get(key) if isinstance(decoding, Mapping) else None


def recorded_max_new_tokens(summary: Mapping[str, Any]) -> int:
    """max_new_tokens the MLX eval used (from its summary), else the study's budget."""
    value = recorded_decoding(summary, "max_new_tokens")
    return value if isinstance(value, int) else STUDY_MAX_NEW_TOKENS
