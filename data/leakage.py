"""The leakage guard (trap 1): glaive repeats rows so often that a random split evaluated the
study on its own training data. Train and eval must share no query, compared after the same
normalisation the dedup uses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mlx_plamo3.errors import InputError, PlamoError

SHOWN_QUERIES = 10


def normalise_query(text: str) -> str:
    """The dedup and leakage key: lowercased, runs of whitespace collapsed to one space."""
    return " ".join(text.split()).lower()


def user_messages(row: dict[str, Any], where: str = "row") -> list[str]:
    """Every user message of a train/eval row, in order (at least one)."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list):
        raise InputError(f"{where}: missing 'messages' list")
    found = [
        message["content"]
        for message in messages
        if isinstance(message, dict)
        and message.get("role") == "user"
        and isinstance(message.get("content"), str)
    ]
    if not found:
        raise InputError(f"{where}: no user message with string 'content' in 'messages'")
    return found


def row_query(row: dict[str, Any], where: str = "row") -> str:
    """The first user message of a train/eval row: its question."""
    return user_messages(row, where)[0]


class LeakageError(PlamoError, ValueError):
    """Training data contains evaluation queries; `queries` lists them (eval spelling)."""

    def __init__(self, queries: Sequence[str], n_train: int, n_eval: int) -> None:
        self.queries = list(queries)
        shown = "\n".join(f"  - {q!r}" for q in self.queries[:SHOWN_QUERIES])
        more = len(self.queries) - SHOWN_QUERIES
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"train/eval leakage: {len(self.queries)} of {n_eval} eval queries also occur in the "
            f"{n_train} training rows (after lowercasing and collapsing whitespace):\n{shown}{tail}"
        )


def find_overlap(
    train_rows: Iterable[dict[str, Any]], eval_rows: Iterable[dict[str, Any]]
) -> tuple[list[str], int, int]:
    """Eval queries (first occurrence, eval order) found in training; with both row counts.
    Every user message of a training row counts (a multi-turn row's later turns too)."""
    train_keys = set()
    n_train = 0
    for n_train, row in enumerate(train_rows, start=1):
        train_keys.update(map(normalise_query, user_messages(row, f"train row {n_train}")))
    overlap: list[str] = []
    seen: set[str] = set()
    n_eval = 0
    for n_eval, row in enumerate(eval_rows, start=1):
        query = row_query(row, f"eval row {n_eval}")
        key = normalise_query(query)
        if key in train_keys and key not in seen:
            seen.add(key)
            overlap.append(query)
    return overlap, n_train, n_eval


def check_no_leak(
    train_rows: Iterable[dict[str, Any]], eval_rows: Iterable[dict[str, Any]]
) -> None:
    """Raise LeakageError naming every overlapping query; return quietly when there is none."""
    overlap, n_train, n_eval = find_overlap(train_rows, eval_rows)
    if overlap:
        raise LeakageError(overlap, n_train, n_eval)
