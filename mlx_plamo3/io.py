"""Atomic file and directory writes: an interrupted run never leaves a file or directory
that looks complete but is not, and a command never deletes what it did not write.

Every directory written through `atomic_directory` carries a small marker file (`OUTPUT_MARKER`)
naming the command that wrote it and the files it wrote. Replacing a directory (`force`) is
allowed only when the marker names the same command and the directory holds nothing else; a
directory the user made, one holding other models, or one where files were added since is
refused, naming what is there. Staging directories left by killed runs are removed the next
time the same output is written (each carries the writer's process id, so a live writer's
staging directory is never touched).

The readers (`read_text`, `read_json`, `read_jsonl`, `read_safetensors`) turn a file that is
missing, not UTF-8 text or not in its format into one error naming the file (and the line where
there is one); `not_utf8_error` is that error for a reader of its own that met undecodable bytes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlx_plamo3.errors import InputError, PlamoError


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


logger = logging.getLogger(__name__)

OUTPUT_MARKER = ".mlx-plamo-output.json"
STAGING_SUFFIX = ".staging"


class OutputDirectoryError(PlamoError, FileExistsError):
    """An output directory that the command may not write over."""


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _entry_names(path: Path) -> list[str]:
    return sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())


def check_replaceable(path: str | Path, writer: str, force: bool) -> None:
    """Raise OutputDirectoryError unless `writer` may write `path`: it is missing or empty, or
    (with `force`) it is an earlier output of the same writer holding only what it wrote."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputDirectoryError(f"{path} is a file, not a directory")
    names = _entry_names(path)
    if not names:
        return
    if not force:
        raise OutputDirectoryError(
            f"{path} already exists and is not empty (use --force to replace it)"
        )
    try:
        marker = json.loads((path / OUTPUT_MARKER).read_text())
        written_by, written = marker["written_by"], set(marker["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputDirectoryError(
            f"{path} was not written by {writer}, so --force will not replace it (it holds "
            f"{_listing(names)}). Choose another output directory, or move those files away."
        ) from None
    if written_by != writer:
        raise OutputDirectoryError(
            f"{path} was written by {written_by}, not {writer}; --force will not replace it. "
            "Choose another output directory."
        )
    added = [n for n in names if n.rstrip("/") not in written | {OUTPUT_MARKER}]
    if added:
        raise OutputDirectoryError(
            f"{path} holds files that {writer} did not write ({_listing(added)}); --force "
            "will not delete them. Move them away or choose another output directory."
        )


def check_file_replaceable(
    path: Path, is_earlier_output: Callable[[Path], bool], what: str, force: bool = True
) -> None:
    """The file counterpart of `check_replaceable`: refuse an output file that is a directory,
    one that exists when `force` is not given, and one that is not `what` (an earlier output
    of the command, as `is_earlier_output` tells), which stays as it is."""
    if not path.exists():
        return
    if path.is_dir():
        raise InputError(f"--out {path} is a directory; give the file's path")
    if not force:
        raise InputError(f"{path} already exists; pass --force to replace it")
    if not is_earlier_output(path):
        raise InputError(f"{path} is not {what}, so it is left as it is; choose another --out")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_staging(path: Path) -> list[Path]:
    """Remove the staging directories of `path` left by writers that are no longer running."""
    removed = []
    prefix = f".{path.name}."
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        name = candidate.name
        ours = name.startswith(prefix) and name.endswith(STAGING_SUFFIX)
        if not ours or not candidate.is_dir():
            continue
        owner = name[len(prefix) :].split(".", 1)[0]
        if owner.isdigit() and _process_alive(int(owner)):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        logger.warning("removed %s, left by an interrupted earlier run", candidate)
        removed.append(candidate)
    return removed


def backup_path(path: Path) -> Path:
    """Where `atomic_directory` moves an output aside while its replacement is renamed in."""
    return path.with_name(f".{path.name}.old")


def recover_interrupted_replace(path: Path) -> None:
    """Undo what a replace killed between its two renames left: the earlier output moved aside
    with nothing in its place is moved back; one left beside a complete new output is removed."""
    backup = backup_path(path)
    if not backup.is_dir():
        return
    if path.exists():
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(backup, path)
        logger.warning("restored %s, which an interrupted run had moved aside", path)


@contextmanager
def atomic_directory(path: str | Path, writer: str, force: bool = False) -> Iterator[Path]:
    """Yield a staging directory beside `path`; on success it replaces `path` in one rename.

    `writer` names the command (as the user types it); `check_replaceable` decides whether an
    existing `path` may be replaced. A failure or kill leaves `path` as it was, or (killed
    between the two renames that replace it) moved aside, where the next write of `path` finds
    it and puts it back (`recover_interrupted_replace`)."""
    path = Path(path)
    recover_interrupted_replace(path)
    remove_stale_staging(path)
    check_replaceable(path, writer, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}."
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=STAGING_SUFFIX))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield staging
        written = sorted(p.name for p in staging.iterdir())
        atomic_write_json(staging / OUTPUT_MARKER, {"written_by": writer, "files": written})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if path.exists():
        backup = backup_path(path)
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(path, backup)
    os.replace(staging, path)  # killed just before: recover_interrupted_replace undoes it
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


class FileFormatError(PlamoError, ValueError):
    """A file that is missing, empty, truncated or not in its format; the message names it."""


def not_utf8_error(path: str | Path) -> FileFormatError:
    """The error for a file that failed to decode as UTF-8, naming its first undecodable byte:
    `path:line: not UTF-8 text (byte 0xff at offset N)`, N counted in bytes from the start of
    the file. The file is scanned again from the start, since a decoder's own position is within
    the chunk it was given."""
    path = Path(path)
    offset = 0
    with path.open("rb") as handle:
        # No multi-byte character spans a newline byte, so lines decode on their own.
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte, at = line[exc.start], offset + exc.start
                return FileFormatError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{byte:02x} at offset {at})"
                )
            offset += len(line)
    return FileFormatError(f"{path}: not UTF-8 text")  # it changed since the failed read


def read_text(path: str | Path) -> str:
    """The UTF-8 text of `path`; bytes that are not UTF-8 are a FileFormatError naming the
    line and the byte (a file that cannot be opened is the OSError `open` raises)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a text file; a line that is not UTF-8 is a
    FileFormatError naming `path:line`."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
        except UnicodeDecodeError:
            raise not_utf8_error(path) from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON-lines file; a line that is not
    JSON is an InputError, and one that is not UTF-8 a FileFormatError, naming `path:line`."""
    for number, line in jsonl_lines(path):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not JSON: {exc}") from None
        yield number, value


def read_json(path: str | Path) -> Any:
    """The JSON document in `path`, or FileFormatError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path} is missing")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path} is not valid JSON ({exc})") from None


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """The arrays in a safetensors file, or FileFormatError naming the file."""
    import mlx.core as mx

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path} is missing")
    try:
        return mx.load(str(path), format="safetensors")
    except (RuntimeError, ValueError) as exc:
        raise FileFormatError(
            f"{path} cannot be read: it is empty, truncated or not a safetensors file ({exc})"
        ) from None


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
