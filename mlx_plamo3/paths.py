"""Where artifacts go: one git-ignored root with a folder per kind, never the code packages."""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACT_KINDS = ("models", "data", "adapters", "results", "reports")
# The folder under models/ that commands read when no --model is given.
DEFAULT_MODEL_DIR_NAME = "plamo-3-nict-2b-base"
# The scheme of a sqlite tracking URI; what follows it is the database file's path.
SQLITE_PREFIX = "sqlite:///"


def artifacts_root() -> Path:
    """`$MLX_PLAMO_HOME`, else `./artifacts` in the working directory."""
    return Path(os.environ.get("MLX_PLAMO_HOME", "artifacts"))


def artifact_dir(kind: str, name: str = "") -> Path:
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; expected one of {ARTIFACT_KINDS}")
    base = artifacts_root() / kind
    return base / name if name else base


def default_model_dir() -> Path:
    """The converted base model commands use by default: models/plamo-3-nict-2b-base."""
    return artifact_dir("models", DEFAULT_MODEL_DIR_NAME)


def mlflow_uri() -> str:
    return f"{SQLITE_PREFIX}{artifacts_root() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None (a server or another scheme).

    `sqlite:///rel/x.db` is relative to the working directory and `sqlite:////abs/x.db`
    absolute, as SQLAlchemy reads them; `~` is left as written (SQLAlchemy does not expand it)."""
    return Path(uri[len(SQLITE_PREFIX) :]) if uri.startswith(SQLITE_PREFIX) else None
