"""The per-question explorer: every distinct question across conditions, with each condition's
answer to it.

Questions are matched by (kind, question text); rows that recorded no question (the study's
leaked eval) match by position. A condition that did not ask a question has no cell there (the
study's v2 used another no-call set). Each cell holds the prediction, the main pass (args-exact
on call rows, no false call on no-call rows), a badge per metric of the row's kind as
`eval.compare.passes` defines a pass, and the scorer's reason. Call questions come first, each
group in order of first appearance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eval.compare import METRIC_KIND, passes
from eval.conditions import Condition
from eval.scoring import RATE_KEYS, Verdict

# Short names so a cell's three badges fit on one line of a narrow explorer column.
BADGE_LABELS = {"parse_rate": "parse", "func_name_acc": "name", "args_exact_match": "args"}


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
    """(kind, question); rows without a question (the study's leaked eval) match by position."""
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
