"""A run's adapter folder: the final adapter, `checkpoints/step-XXXXXX/` and `evals/`.

Each holds the adapter (adapters.safetensors + adapter_config.json, loadable by `load_adapter`
and `mlx-plamo eval`), the optimizer state (optimizer.safetensors: Adam moments, step count,
learning rate) and trainer_state.json (step, counters, the run's MLflow id and the settings that
must match on resume). The directory is staged beside its final name and renamed into place
only when complete, so a kill mid-save leaves the previous checkpoint as the latest good one.
`evals/step-XXXXXX.json` holds each checkpoint eval's records.

The folder policy (`prepare_adapter_dir`): a folder holding a trained adapter or checkpoints is
continued with resume (from its latest checkpoint; an adapter with no checkpoint is refused, as
resuming would train anew over it), cleared of what training wrote with overwrite, and refused
otherwise. A damaged checkpoint is a CheckpointError naming it, never a traceback.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from mlx_plamo3.errors import PlamoError
from mlx_plamo3.io import (
    FileFormatError,
    atomic_directory,
    atomic_save_safetensors,
    atomic_write_json,
    read_json,
    read_safetensors,
)
from mlx_plamo3.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraConfig,
    lora_parameters,
    save_adapter,
)
from mlx_plamo3.model import Model

CHECKPOINTS = "checkpoints"
EVAL_DIR = "evals"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
EVAL_FILE = "eval.json"
STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(PlamoError, RuntimeError):
    """A checkpoint or adapter folder is missing, incomplete or does not fit this run."""


def eval_records_path(adapter_dir: str | Path, step: int) -> Path:
    return Path(adapter_dir) / EVAL_DIR / f"step-{step:06d}.json"


def prepare_adapter_dir(adapter_dir: Path, overwrite: bool, resume: bool) -> Path | None:
    """Apply the folder policy to `adapter_dir`; returns the checkpoint to resume from, if any.

    overwrite removes what training writes there (checkpoints, evals, the final adapter) and
    nothing else; without resume or overwrite a folder holding a run is refused."""
    if adapter_dir.exists() and not adapter_dir.is_dir():
        raise CheckpointError(f"--adapter-path {adapter_dir} is a file, not a directory")
    if overwrite:
        clear_training_output(adapter_dir)
        return None
    latest = latest_checkpoint(adapter_dir)
    has_adapter = (adapter_dir / ADAPTER_WEIGHTS).exists()
    if not resume and (latest is not None or has_adapter):
        raise CheckpointError(
            f"{adapter_dir} already holds a trained adapter or checkpoints; pass --resume to "
            "continue it, --overwrite to start over, or another --adapter-path"
        )
    if resume and latest is None and has_adapter:
        # Resuming starts from a checkpoint; with none, it would train anew over this adapter.
        raise CheckpointError(
            f"{adapter_dir} holds a trained adapter but no checkpoint to resume from; pass "
            "--overwrite to train a new one there, or another --adapter-path"
        )
    return latest if resume else None


def clear_training_output(adapter_dir: Path) -> None:
    """Remove what training writes in `adapter_dir`: the final adapter, `step-XXXXXX`
    checkpoints and eval records, and `checkpoints/` and `evals/` once that leaves them empty.
    Anything else (a file the user put in `checkpoints/`, say) stays."""
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        (adapter_dir / name).unlink(missing_ok=True)
    checkpoints, evals = checkpoint_root(adapter_dir), adapter_dir / EVAL_DIR
    if checkpoints.is_dir():
        for path in checkpoints.iterdir():
            if path.is_dir() and STEP_DIR.match(path.name):
                shutil.rmtree(path)
    if evals.is_dir():
        for path in evals.iterdir():
            if path.is_file() and path.suffix == ".json" and STEP_DIR.match(path.stem):
                path.unlink()
    for folder in (checkpoints, evals):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def checkpoint_root(adapter_dir: str | Path) -> Path:
    return Path(adapter_dir) / CHECKPOINTS


def checkpoint_path(adapter_dir: str | Path, step: int) -> Path:
    return checkpoint_root(adapter_dir) / f"step-{step:06d}"


def list_checkpoints(adapter_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (step, path), oldest first; staging leftovers are ignored."""
    root = checkpoint_root(adapter_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(adapter_dir: str | Path) -> Path | None:
    found = list_checkpoints(adapter_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    adapter_dir: str | Path,
    step: int,
    model: Model,
    lora_config: LoraConfig,
    optimizer: optim.Optimizer,
    adapter_metadata: dict[str, Any],
    trainer_state: dict[str, Any],
) -> Path:
    """Write one checkpoint atomically (replacing one of the same step); returns its path."""
    path = checkpoint_path(adapter_dir, step)
    with atomic_directory(path, "mlx-plamo train", force=True) as staging:
        save_adapter(model, staging, lora_config, adapter_metadata)
        atomic_save_safetensors(
            staging / OPTIMIZER_FILE, dict(tree_flatten(optimizer.state)), {"format": "mlx"}
        )
        # Written last: a directory without it is never taken for a checkpoint.
        atomic_write_json(staging / STATE_FILE, {**trainer_state, "step": step})
    return path


def prune_checkpoints(adapter_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (keep 0: delete none); returns the deleted."""
    if keep <= 0:
        return []
    found = list_checkpoints(adapter_dir)
    doomed = [path for _, path in found[:-keep]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    state_path = Path(path) / STATE_FILE
    try:
        return read_json(state_path)
    except (OSError, FileFormatError) as exc:
        raise CheckpointError(f"{state_path}: cannot read the trainer state: {exc}") from None


def load_checkpoint(path: str | Path, model: Model, optimizer: optim.Optimizer) -> dict[str, Any]:
    """Restore LoRA weights and optimizer state from a checkpoint; returns its trainer state.

    Call before compiling anything that captures `optimizer.state`: the state dict is
    replaced, and a compiled function would keep reading the old one."""
    path = Path(path)
    state = read_trainer_state(path)
    try:
        weights = read_safetensors(path / ADAPTER_WEIGHTS)
        flat = read_safetensors(path / OPTIMIZER_FILE)
    except FileFormatError as exc:
        raise CheckpointError(
            f"checkpoint {path} is damaged: {exc}. Delete that step-* folder to resume from the "
            "one before, or pass --overwrite to start over"
        ) from None
    wanted = {k: v.shape for k, v in lora_parameters(model).items()}
    found = {k: v.shape for k, v in weights.items()}
    if wanted != found:
        missing, extra = sorted(set(wanted) - set(found)), sorted(set(found) - set(wanted))
        raise CheckpointError(
            f"{path}: adapter does not fit this model (missing {missing[:3]}, unexpected "
            f"{extra[:3]}, or shapes differ; was it trained with other LoRA settings?)"
        )
    model.load_weights(list(weights.items()), strict=False)
    optimizer.state = tree_unflatten(list(flat.items()))
    mx.eval(model.parameters(), optimizer.state)
    return state
