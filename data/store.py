"""Finding and reading built datasets: what `mlx-plamo train --data v2` and the eval use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.call_format import DEFAULT_CALL_FORMAT, recorded_call_format
from data.recipes import RECIPES
from data.schema import ROW_KINDS
from mlx_plamo3.errors import InputError
from mlx_plamo3.io import read_json, read_jsonl
from mlx_plamo3.paths import artifact_dir

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
FRESH_EVAL_FILE = "eval_fresh.jsonl"
AUDIT_FILE = "audit.json"
MANIFEST_FILE = "manifest.json"
# A row: the system message, the first user message, then any turns of these roles (v3's
# multi-turn rows), ending with an assistant message.
FIRST_ROLES = ("system", "user")
LATER_ROLES = ("user", "assistant", "tool")


def resolve_dataset(name_or_path: str | Path, needs: str = TRAIN_FILE) -> Path:
    """A built dataset directory from a recipe/dataset name ("v2" → artifacts/data/v2) or a path,
    holding the file `needs` (train.jsonl for training, eval.jsonl for the eval)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    bare = "/" not in text and "\\" not in text and text not in ("", ".", "..")
    # A bare name means a built dataset first, so a stray ./v2 folder does not shadow it.
    if bare and (artifact_dir("data", text) / needs).is_file():
        return artifact_dir("data", text)
    if path.is_dir():
        candidate = path
    elif path.is_file():
        raise FileNotFoundError(
            f"{text} is a file; pass the dataset directory that holds it ({path.parent})"
        )
    elif bare:
        candidate = artifact_dir("data", text)
    else:
        raise FileNotFoundError(f"dataset directory {text} does not exist")
    if not (candidate / needs).is_file():
        hint = (
            f"run `mlx-plamo data build --recipe {text}` first"
            if text in RECIPES
            else f"build one with `mlx-plamo data build --recipe v2 --out {candidate}`"
        )
        raise FileNotFoundError(f"no built dataset at {candidate} ({needs} missing); {hint}")
    return candidate


def load_eval_rows(name_or_path: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """(the eval.jsonl of a built dataset, its validated rows); an error when it has none."""
    eval_file = resolve_dataset(name_or_path, needs=EVAL_FILE) / EVAL_FILE
    rows = load_rows(eval_file)
    if not rows:
        raise InputError(f"{eval_file} holds no questions")
    return eval_file, rows


def validate_row(row: Any, where: str) -> dict[str, Any]:
    """Check one train/eval row's shape; the error names the file, line and key."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: row is not a JSON object")
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < len(FIRST_ROLES) + 1:
        raise InputError(f"{where}: 'messages' must be a list of at least 3 messages")
    for i, message in enumerate(messages):
        roles = (FIRST_ROLES[i],) if i < len(FIRST_ROLES) else LATER_ROLES
        if i == len(messages) - 1:
            roles = ("assistant",)
        if not isinstance(message, dict) or message.get("role") not in roles:
            expected = " or ".join(repr(r) for r in roles)
            raise InputError(f"{where}: 'messages'[{i}] must have 'role' {expected}")
        if not isinstance(message.get("content"), str):
            raise InputError(f"{where}: 'messages'[{i}] has no string 'content'")
    if row.get("kind") not in ROW_KINDS:
        raise InputError(f"{where}: 'kind' must be one of {ROW_KINDS}, got {row.get('kind')!r}")
    tools = row.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)
    ):
        raise InputError(f"{where}: 'tools' must be a list of tool schema objects")
    return row


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a train/eval jsonl file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; pass its {TRAIN_FILE} or {EVAL_FILE}")
    return [validate_row(row, f"{path}:{number}") for number, row in read_jsonl(path)]


def eval_files(directory: Path) -> list[Path]:
    """The eval files of a built dataset: the frozen eval and, if built, the fresh one."""
    return [
        directory / name for name in (EVAL_FILE, FRESH_EVAL_FILE) if (directory / name).is_file()
    ]


def dataset_call_format(directory: Path) -> str:
    """The call format a built dataset's manifest records (json for builds before it did)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return DEFAULT_CALL_FORMAT
    return recorded_call_format(read_json(path), str(path))
