"""Loading sources: local .json/.jsonl/.parquet files, directories, and the hub path (with
`datasets.load_dataset` replaced, since the Hub is unreachable here)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import data
from data.schema import ParseError
from data.sources import (
    SourceError,
    iter_json_array,
    open_source,
    parse_row,
)

SAMPLES = Path(data.__file__).parent / "samples"
GLAIVE = SAMPLES / "glaive-function-calling-v2.sample.jsonl"
DEMO = SAMPLES / "llamafactory_glaive_toolcall_en_demo.json"


def glaive_rows() -> list[dict]:
    return [json.loads(line) for line in GLAIVE.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("chunk_chars", [1, 7, 100, 1 << 20])
def test_json_array_streams_every_row_at_any_chunk_size(tmp_path: Path, chunk_chars: int) -> None:
    rows = glaive_rows()
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    assert list(iter_json_array(path, chunk_chars=chunk_chars)) == rows


def test_json_array_edge_forms(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("  [ ]\n")
    assert list(iter_json_array(path)) == []
    path.write_text('[{"a": 1},{"b": "]"}]')
    assert list(iter_json_array(path, chunk_chars=3)) == [{"a": 1}, {"b": "]"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"a": 1}, {"b": 2', "not a complete JSON array"),
        ('[{"a": 1}, {"b": 2,, }]', "invalid JSON near character 19"),
        ("", "not a complete JSON array"),
    ],
)
def test_broken_json_array_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(SourceError, match=message) as info:
        list(iter_json_array(path, chunk_chars=4))
    assert str(path) in str(info.value)


def test_json_file_that_is_a_dict_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('"just a string"')
    with pytest.raises(SourceError, match="expected a JSON array"):
        open_source(str(path))


def test_jsonl_bad_line_becomes_a_counted_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lines = GLAIVE.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], "{oops", "", lines[1]]) + "\n", encoding="utf-8")
    info, rows, total = open_source(str(path))
    items = list(rows)
    assert (info.kind, total) == ("file", -1)
    assert len(items) == 3 and isinstance(items[1], ParseError)
    assert items[1].reason == "bad_json_line" and f"{path}:2" in items[1].detail
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_json_file_in_jsonl_layout_is_read_as_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(GLAIVE.read_text(encoding="utf-8"), encoding="utf-8")
    _, rows, _ = open_source(str(path))
    assert list(rows) == glaive_rows()


def test_parquet_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(glaive_rows()), path)
    _, rows, total = open_source(str(path))
    assert total == 13
    assert list(rows) == glaive_rows()


def test_directory_of_data_files_in_name_order(tmp_path: Path) -> None:
    rows = glaive_rows()
    (tmp_path / "b.jsonl").write_text(json.dumps(rows[5]) + "\n")
    (tmp_path / "a.json").write_text(json.dumps(rows[:2]))
    (tmp_path / "notes.txt").write_text("ignored")
    info, stream, _ = open_source(str(tmp_path))
    assert list(stream) == [rows[0], rows[1], rows[5]]
    assert [f["path"] for f in info.files] == ["a.json", "b.jsonl"]


def test_saved_dataset_directory(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(glaive_rows()).save_to_disk(str(tmp_path / "saved"))
    info, rows, total = open_source(str(tmp_path / "saved"))
    assert (info.kind, total) == ("dir", 13)
    assert list(rows) == glaive_rows()


def test_hub_id_goes_through_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name: str, split: str, revision: str | None = None) -> object:
        calls.append((name, split, revision))
        return datasets.Dataset.from_list(glaive_rows()[:3])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    info, rows, total = open_source("glaiveai/glaive-function-calling-v2", revision="abc123")
    assert calls == [("glaiveai/glaive-function-calling-v2", "train", "abc123")]
    assert (info.kind, info.revision, total) == ("hub", "abc123", 3)
    assert list(rows) == glaive_rows()[:3]


def test_unreachable_hub_is_a_clear_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args: object, **kwargs: object) -> object:
        raise ConnectionError("Hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SourceError, match="Offline\\? Pass a local"):
        open_source("someone/some-dataset")


@pytest.mark.parametrize("spec", ["missing.jsonl", "no/such/dir/file.json", "not a hub id"])
def test_missing_local_path_is_named(spec: str) -> None:
    with pytest.raises(SourceError, match="no such file or directory"):
        open_source(spec)


def test_parse_row_detects_each_format_per_row() -> None:
    glaive = parse_row(glaive_rows()[2])
    sharegpt = parse_row(json.loads(DEMO.read_text(encoding="utf-8"))[0])
    assert (glaive.source_format, sharegpt.source_format) == ("glaive", "sharegpt")
    with pytest.raises(ParseError) as info:
        parse_row({"query": "x", "answers": []})
    assert info.value.reason == "unknown_format"
    with pytest.raises(ParseError) as info:
        parse_row(["not", "an", "object"])
    assert info.value.reason == "not_an_object"
