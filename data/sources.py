"""Where source rows come from: a Hugging Face Hub id (through `datasets.load_dataset`), a local
`.json` / `.jsonl` / `.parquet` file, or a directory (a `save_to_disk` dataset or data files).
Each row's format (raw glaive or LLaMA-Factory sharegpt) is detected on its own.

A row that cannot be read (a bad JSON line, a row in no known format) becomes a `ParseError`
and is skipped; a source that cannot be read as a whole fails with one error naming it: a
`SourceError`, or the `FileFormatError` of `mlx_plamo3.io` for a file that is not UTF-8 text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.glaive import parse_glaive_row
from data.schema import Conversation, ParseError
from data.sharegpt import parse_sharegpt_row
from mlx_plamo3.errors import PlamoError
from mlx_plamo3.io import file_sha256, jsonl_lines, not_utf8_error
from mlx_plamo3.loading import is_hub_id

DEFAULT_SOURCE = "glaiveai/glaive-function-calling-v2"
FILE_SUFFIXES = (".json", ".jsonl", ".parquet")
_CHUNK_CHARS = 1 << 20
# Files that mark a directory written by `datasets.Dataset.save_to_disk`.
_SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")

Row = dict[str, Any] | ParseError  # a ParseError stands in for a row that could not be read


class SourceError(PlamoError, ValueError):
    """A source that cannot be opened or read as a whole (not one bad row)."""


@dataclass
class SourceInfo:
    """Provenance of one source, for the manifest."""

    spec: str
    kind: str  # "hub" | "file" | "dir"
    sha256: str | None = None
    files: list[dict[str, str]] = field(default_factory=list)
    revision: str | None = None
    rows: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"spec": self.spec, "kind": self.kind, "rows": self.rows}
        if self.sha256:
            out["sha256"] = self.sha256
        if self.files:
            out["files"] = self.files
        if self.kind == "hub":
            out["revision"] = self.revision
        return out


def parse_row(row: Any) -> Conversation:
    """Detect a row's format by its fields and parse it."""
    if not isinstance(row, dict):
        raise ParseError("not_an_object", f"row is a {type(row).__name__}, not an object")
    if "chat" in row or "system" in row:
        return parse_glaive_row(row)
    if "conversations" in row or "messages" in row:
        return parse_sharegpt_row(row)
    raise ParseError("unknown_format", f"no 'chat' or 'conversations' field (keys: {sorted(row)})")


def iter_jsonl(path: Path) -> Iterator[Row]:
    """One object per line; a bad line becomes a ParseError naming the line, not a crash."""
    for number, line in jsonl_lines(path):
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            yield ParseError("bad_json_line", f"{path}:{number}: {exc}")


def iter_json_array(path: Path, chunk_chars: int = _CHUNK_CHARS) -> Iterator[Row]:
    """The elements of a top-level JSON array, read incrementally.

    glaive's hub file is one 271 MB array; `json.load` would hold all its text and every row at
    once. A malformed element cannot be skipped (nothing marks where the next one starts), so
    it fails the source with the character position. Separating commas are not policed."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as handle:
        buffer, pos, dropped, eof, opened = "", 0, 0, False, False

        def refill() -> None:
            nonlocal buffer, pos, dropped, eof
            try:
                more = handle.read(chunk_chars)
            except UnicodeDecodeError:
                raise not_utf8_error(path) from None
            eof = not more
            buffer, pos, dropped = buffer[pos:] + more, 0, dropped + pos

        while True:
            while pos < len(buffer) and (buffer[pos].isspace() or (opened and buffer[pos] == ",")):
                pos += 1
            if pos == len(buffer):
                if eof:
                    raise SourceError(f"{path}: not a complete JSON array (empty or truncated?)")
                refill()
                continue
            if not opened:
                if buffer[pos] != "[":
                    raise SourceError(f"{path}: expected a JSON array of rows")
                opened, pos = True, pos + 1
                continue
            if buffer[pos] == "]":
                return
            try:
                row, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                if eof and exc.pos >= len(buffer):
                    raise SourceError(f"{path}: not a complete JSON array (truncated?)") from None
                if eof:
                    raise SourceError(
                        f"{path}: invalid JSON near character {dropped + exc.pos}: {exc.msg}"
                    ) from None
                refill()  # most likely the element continues in the next chunk
                continue
            yield row
            pos = end


def iter_json_file(path: Path) -> Iterator[Row]:
    """A `.json` file holding an array of rows, or (as LLaMA-Factory allows) JSON Lines."""
    with path.open(encoding="utf-8") as handle:
        try:
            head = handle.read(4096).lstrip()
        except UnicodeDecodeError:
            raise not_utf8_error(path) from None
    if head.startswith("["):
        return iter_json_array(path)
    if head.startswith("{"):
        return iter_jsonl(path)
    raise SourceError(f"{path}: expected a JSON array of rows or JSON Lines")


def open_parquet(path: Path) -> Any:
    """A pyarrow ParquetFile, or SourceError naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq  # installed with `datasets`; only parquet sources need it

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: not a readable parquet file: {exc}") from None


def iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa

    parquet = open_parquet(path)
    try:
        for batch in parquet.iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: corrupt parquet data: {exc}") from None


def iter_file(path: Path) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return iter_jsonl(path)
    if suffix == ".json":
        return iter_json_file(path)
    if suffix == ".parquet":
        return iter_parquet(path)
    raise SourceError(f"{path}: unsupported file type {suffix!r}; expected one of {FILE_SUFFIXES}")


def _data_files(directory: Path) -> list[Path]:
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES
    )
    if not files:
        raise SourceError(f"{directory}: no {'/'.join(FILE_SUFFIXES)} files in this directory")
    return files


def _saved_dataset_rows(directory: Path) -> tuple[Iterator[Row], int]:
    import datasets  # heavy import, only for this kind of source

    loaded = datasets.load_from_disk(str(directory))
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    return iter(loaded), len(loaded)


def _hub_rows(spec: str, revision: str | None) -> tuple[Iterator[Row], int]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a declared dependency
        raise SourceError(f"{spec}: loading from the Hub needs `datasets` ({exc})") from None
    try:
        loaded = datasets.load_dataset(spec, split="train", revision=revision)
    except Exception as exc:  # network, auth and missing-repo errors all surface here
        raise SourceError(
            f"could not load {spec!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "Offline? Pass a local .json/.jsonl/.parquet file or directory with --source."
        ) from None
    return iter(loaded), len(loaded)


def open_source(spec: str, revision: str | None = None) -> tuple[SourceInfo, Iterator[Row], int]:
    """Provenance, a row iterator and the row count when known in advance (else -1)."""
    path = Path(spec).expanduser()
    if path.is_file():
        info = SourceInfo(spec=spec, kind="file", sha256=file_sha256(path))
        total = -1
        if path.suffix.lower() == ".parquet":
            total = open_parquet(path).metadata.num_rows
        return info, iter_file(path), total
    if path.is_dir():
        if any((path / marker).exists() for marker in _SAVED_DATASET_MARKERS):
            files = sorted(p for p in path.rglob("*") if p.is_file())
            info = SourceInfo(spec=spec, kind="dir", files=_file_digests(path, files))
            rows, total = _saved_dataset_rows(path)
            return info, rows, total
        files = _data_files(path)
        info = SourceInfo(spec=spec, kind="dir", files=_file_digests(path, files))
        return info, (row for file in files for row in iter_file(file)), -1
    if path.suffix.lower() in FILE_SUFFIXES or not is_hub_id(spec):
        raise SourceError(f"{spec}: no such file or directory")
    rows, total = _hub_rows(spec, revision)
    return SourceInfo(spec=spec, kind="hub", revision=revision), rows, total


def _file_digests(root: Path, files: list[Path]) -> list[dict[str, str]]:
    return [{"path": str(p.relative_to(root)), "sha256": file_sha256(p)} for p in files]
