"""Where artifacts go: one git-ignored root with a folder per kind, never the code packages."""

from __future__ import annotations

import os
from pathlib import Path

KINDS = ("models", "data", "adapters", "results", "reports")
# The folder under models/ that commands read when no --model is given.
DEFAULT_MODEL_DIR_NAME = "plamo-3-nict-2b-base"


def artifacts_root() -> Path:
    """`$MLX_PLAMO_HOME`, else `./artifacts` in the working directory."""
    return Path(os.environ.get("MLX_PLAMO_HOME", "artifacts"))


def artifact_dir(kind: str, name: str = "") -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; expected one of {KINDS}")
    base = artifacts_root() / kind
    return base / name if name else base


def default_model_dir() -> Path:
    """The converted base model commands use by default: models/plamo-3-nict-2b-base."""
    return artifact_dir("models", DEFAULT_MODEL_DIR_NAME)


def mlflow_uri() -> str:
    return f"sqlite:///{artifacts_root() / 'mlflow.db'}"
