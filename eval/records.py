"""Evaluation records files: `{"summary": {...}, "rows": [{kind, question, gold, pred}, ...]}`.

One row per eval question, as the study wrote them (`finetune/results/*.json`). Our own eval may
add fields to a row (`tools`: the tool schemas the prompt offered, used by strict scoring; a
BFCL row also carries `suite`, `category`, `id`, `functions` and `ground_truth`, see
`eval.bfcl_scoring`).
The study's contaminated first eval has no `question` field, so `question` is optional.

`load_records` refuses, with a `RecordsError` naming the file and the line or row, a file that
is missing, not UTF-8 text or not JSON, and any row with a `row_problem`; for a BFCL row that
includes what BFCL's checker could not score (`eval.bfcl.case_problem`), so scoring never
meets a malformed row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.bfcl import NOCALL_CATEGORIES, case_problem, is_bfcl_row
from eval.scoring import ROW_KINDS, parse_gold
from mlx_plamo3.errors import PlamoError
from mlx_plamo3.io import FileFormatError, atomic_write_json, read_text

REQUIRED_ROW_KEYS: tuple[str, ...] = ("kind", "gold", "pred")


class RecordsError(PlamoError, ValueError):
    """A records file that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Records:
    path: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def condition(self) -> str:
        """The summary's condition, else the file name without its suffix."""
        condition = self.summary.get("condition")
        return condition if isinstance(condition, str) and condition else self.path.stem


def row_problem(row: Any) -> str | None:
    """What is wrong with one row, or None if it is usable."""
    if not isinstance(row, dict):
        return f"must be an object, got {type(row).__name__}"
    missing = [key for key in REQUIRED_ROW_KEYS if key not in row]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    if row["kind"] not in ROW_KINDS:
        return f"kind must be one of {', '.join(ROW_KINDS)}, got {row['kind']!r}"
    for key in ("gold", "pred", "question"):
        if key in row and not isinstance(row[key], str):
            return f"'{key}' must be a string, got {type(row[key]).__name__}"
    tools = row.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        return "'tools' must be a list of tool schema objects"
    if is_bfcl_row(row):
        return bfcl_row_problem(row)
    if row["kind"] == "call":
        try:
            parse_gold(row["gold"])
        except ValueError as exc:
            return str(exc)
    return None


def bfcl_row_problem(row: Mapping[str, Any]) -> str | None:
    """What a BFCL row lacks for its checker (`eval.bfcl.case_problem` on its `category`,
    `functions` and `ground_truth`), or a `kind` its category does not have."""
    category = row.get("category")
    problem = case_problem(category, row.get("functions"), row.get("ground_truth"))
    if problem is not None:
        return f"BFCL row: {problem}"
    kind = "nocall" if category in NOCALL_CATEGORIES else "call"
    if row["kind"] != kind:
        return f"BFCL row: kind must be {kind!r} for category {category!r}, got {row['kind']!r}"
    return None


def validate_records(data: Any, source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check a loaded records object; raise RecordsError naming `source` and the row index."""
    if not isinstance(data, dict):
        raise RecordsError(f"{source}: expected an object with 'summary' and 'rows'")
    for key in ("summary", "rows"):
        if key not in data:
            raise RecordsError(f"{source}: missing top-level key '{key}'")
    if not isinstance(data["summary"], dict):
        raise RecordsError(f"{source}: 'summary' must be an object")
    if not isinstance(data["rows"], list):
        raise RecordsError(f"{source}: 'rows' must be a list")
    for index, row in enumerate(data["rows"]):
        problem = row_problem(row)
        if problem is not None:
            raise RecordsError(f"{source}: row {index}: {problem}")
    return data["summary"], data["rows"]


def load_records(path: str | Path) -> Records:
    """Read and validate a records file."""
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except FileNotFoundError:
        raise RecordsError(f"{path}: no such records file") from None
    except FileFormatError as exc:  # not UTF-8
        raise RecordsError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise RecordsError(f"{path}: not valid JSON ({exc})") from None
    summary, rows = validate_records(data, str(path))
    return Records(path=path, summary=summary, rows=rows)


def is_records_file(path: Path) -> bool:
    """Whether `path` loads as a records file (`load_records`)."""
    try:
        load_records(path)
    except (RecordsError, OSError):
        return False
    return True


def write_records(
    path: str | Path, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> None:
    """Validate, then write atomically (a crash never leaves a half-written records file)."""
    data = {"summary": dict(summary), "rows": [dict(row) for row in rows]}
    validate_records(data, str(path))
    atomic_write_json(path, data, indent=1)
