"""Shared fixtures: tiny PLaMo 3 checkpoints written at test time through the real code."""

from __future__ import annotations

from pathlib import Path

import pytest

from convert.convert import convert_checkpoint
from convert.tiny import write_tiny_checkpoint


@pytest.fixture(autouse=True)
def _isolated_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Anything a test writes by default lands in its own temporary artifacts root.
    monkeypatch.setenv("MLX_PLAMO_HOME", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint in Hugging Face layout (fp32, tied embeddings)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "hf", seed=0)


@pytest.fixture(scope="session")
def tiny_mlx_dir(tiny_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint passed through the real converter, kept in fp32."""
    out = tmp_path_factory.mktemp("tiny-mlx") / "mlx"
    return convert_checkpoint(tiny_hf_dir, out, dtype="float32", progress=lambda x, **_: x)
