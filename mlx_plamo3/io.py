"""Atomic file and directory writes: an interrupted run never leaves a file or directory
that looks complete but is not."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextmanager
def atomic_directory(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a staging directory beside `path`; on success it replaces `path` in one rename.

    A failure or kill leaves `path` as it was (a stale `.staging` directory at worst)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not force:
        raise FileExistsError(f"{path} already exists and is not empty (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".staging"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if path.exists():
        backup = path.with_name(f".{path.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(path, backup)
    os.replace(staging, path)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (datasets and weights can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_save_safetensors(
    path: str | Path, arrays: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """mx.save_safetensors through a temporary file in the same directory, then a rename."""
    import mlx.core as mx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mlx appends ".safetensors" to names without it, so the temporary name keeps the suffix.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.safetensors")
    try:
        mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
