"""Bad input files met by the readers, through the command line: bytes that are not UTF-8 in
every file a command reads, and hand-edited BFCL records whose function docs or ground truth
BFCL's checker cannot use. Each must end in one line naming the file and its line or row
(`report` skips the file with that line as a note), never in a traceback."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from commands.main import main as cli_main
from data.call_format import call_text
from data.prompt import example_row, render_tools
from eval.bfcl import case_row, load_cases, question_text
from eval.records import write_records

sys.path.insert(0, str(Path(__file__).parent))
from lora_helpers import make_random_adapter

# The first case of each category, in `CATEGORIES` order: row 0 is simple_python's
# calculate_triangle_area(base: integer, height: integer, unit: string), row 4 irrelevance.
SIMPLE_ROW, IRRELEVANCE_ROW = 0, 4


def run(args: list[Any]):
    return CliRunner().invoke(cli_main, [str(a) for a in args])


def refused(result, *fragments: str) -> None:
    """The command failed with one line holding every fragment, and no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and all(f in error[0] for f in fragments), result.output


def spoil(path: Path, line: int) -> str:
    """Put a 0xff byte at the start of `line` (from 1) of `path`; the error expected for it."""
    data = path.read_bytes()
    offset = sum(len(text) + 1 for text in data.split(b"\n")[: line - 1])
    path.write_bytes(data[:offset] + b"\xff" + data[offset:])
    return f"{path}:{line}: not UTF-8 text (byte 0xff at offset {offset})"


def write_bfcl_records(path: Path) -> Path:
    """A records file as `eval --suite bfcl` writes it, for the first case of each category,
    each answered with silence."""
    return write_records_of(path, load_cases(limit_per_category=1), lambda row: "")


def write_records_of(path: Path, cases, pred: Callable[[dict[str, Any]], str]) -> Path:
    """The records of `cases` (the rows `case_row` makes), each answered by `pred(row)`."""
    rows = []
    for case in cases:
        row = case_row(case)
        del row["messages"]
        rows.append({**row, "question": question_text(case), "pred": pred(row)})
    write_records(path, {"condition": path.stem}, rows)
    return path


def write_dataset(directory: Path) -> Path:
    """A built-dataset folder of two training rows and two eval rows."""
    tool = {"name": "area", "description": "Area", "parameters": {"type": "object"}}
    directory.mkdir(parents=True)
    for name, questions in (("train", ("one?", "two?")), ("eval", ("three?", "four?"))):
        rows = [
            example_row(render_tools([tool]), q, call_text("area", {}), "call", [tool])
            for q in questions
        ]
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


@pytest.fixture(scope="module")
def adapter_dir(tiny_hf_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    make_random_adapter(tiny_hf_dir, out)
    return out


# ---- A. bytes that are not UTF-8 ---------------------------------------------------------------


RECORDS_COMMANDS = {
    "score": lambda bad, good, adapter, out: ["score", bad],
    "eval-compare": lambda bad, good, adapter, out: ["eval", "--compare", good, bad],
    "export": lambda bad, good, adapter, out: [
        *("export", "--adapter", adapter, "--out", out, "--results", bad)
    ],
    "check-torch": lambda bad, good, adapter, out: [
        *("check-torch", "--base", adapter, "--adapter", adapter, "--results", bad)
    ],
}


@pytest.mark.parametrize("command", RECORDS_COMMANDS)
def test_non_utf8_records_file_is_named_with_its_line(command, adapter_dir, tmp_path):
    good = write_bfcl_records(tmp_path / "good.json")
    bad = write_bfcl_records(tmp_path / "bad.json")
    expected = spoil(bad, 3)
    args = RECORDS_COMMANDS[command](bad, good, adapter_dir, tmp_path / "peft")
    refused(run(args), expected)
    assert not (tmp_path / "peft").exists()


def test_non_utf8_records_file_is_skipped_by_report_with_a_note(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    write_bfcl_records(results / "good.json")
    expected = spoil(write_bfcl_records(results / "bad.json"), 3)
    result = run(["report", "--results", results, "--out", tmp_path / "report", "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert f"note: skipped {expected}" in result.output
    assert "(1 conditions" in result.output


@pytest.mark.parametrize("spoiled", ["train.jsonl", "eval.jsonl"])
def test_non_utf8_dataset_file_is_named_by_data_check_leak(spoiled, tmp_path):
    data = write_dataset(tmp_path / "data")
    expected = spoil(data / spoiled, 2)
    refused(run(["data", "check-leak", data / "train.jsonl", data / "eval.jsonl"]), expected)


def test_non_utf8_train_jsonl_is_named_by_train(tiny_mlx_dir, tmp_path):
    data = write_dataset(tmp_path / "data")
    expected = spoil(data / "train.jsonl", 2)
    args = ["train", "--model", tiny_mlx_dir, "--data", data, "--adapter-path", tmp_path / "a"]
    refused(run(args), expected)


def test_non_utf8_eval_jsonl_is_named_by_eval(tiny_mlx_dir, tmp_path):
    data = write_dataset(tmp_path / "data")
    expected = spoil(data / "eval.jsonl", 2)
    args = ["eval", "--condition", "base", "--model", tiny_mlx_dir, "--data", data]
    refused(run([*args, "--out", tmp_path / "records.json"]), expected)
    assert not (tmp_path / "records.json").exists()


SAMPLE_SOURCE = Path(__file__).parents[1] / "data/samples/llamafactory_glaive_toolcall_en_demo.json"


# The 300 sample rows as a JSON array (9158 lines: line 9000 lies past the 4 KiB read to tell
# an array from JSON Lines) and as JSON Lines (line 200: after 199 rows were parsed).
@pytest.mark.parametrize("suffix, line", [(".json", 9000), (".jsonl", 200)])
def test_non_utf8_source_is_named_by_data_build(suffix, line, tmp_path):
    source = tmp_path / f"source{suffix}"
    rows = json.loads(SAMPLE_SOURCE.read_text(encoding="utf-8"))
    if suffix == ".json":
        source.write_text(json.dumps(rows, indent=1))
    else:
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    expected = spoil(source, line)
    args = ["data", "build", "--recipe", "v2", "--source", source, "--out", tmp_path / "out"]
    refused(run(args), expected)
    assert not (tmp_path / "out").exists()


def test_non_utf8_train_config_is_named(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 1\n# notes\nseed: 3\n")
    expected = spoil(config, 2)
    refused(run(["train", "--config", config, "--print-config"]), expected)


# ---- B. hand-edited BFCL records ---------------------------------------------------------------


def set_key(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda row: row.__setitem__(key, value)


def edit_function(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda row: edit(row["functions"][0])


def edit_property(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return edit_function(lambda function: edit(function["parameters"]["properties"]["base"]))


BASE_PARAMETER = "function doc 0: 'calculate_triangle_area': parameter 'base'"
BFCL_TYPES = "string, integer, float, boolean, array, tuple, dict, any"
# (row, edit, what the error says after "FILE: row N: BFCL row: ")
MALFORMED_BFCL_ROWS = {
    "ground_truth_of_strings": (
        SIMPLE_ROW,
        set_key("ground_truth", ["a", "b"]),
        "ground_truth[0]: must be an object with exactly one function name",
    ),
    "empty_ground_truth": (
        SIMPLE_ROW,
        set_key("ground_truth", []),
        "the ground truth must be a non-empty list of expected calls",
    ),
    "acceptable_values_not_a_list": (
        SIMPLE_ROW,
        set_key("ground_truth", [{"calculate_triangle_area": {"base": 10}}]),
        "ground_truth[0].calculate_triangle_area.base: acceptable values must be a list",
    ),
    "ground_truth_entry_not_an_object": (
        SIMPLE_ROW,
        set_key("ground_truth", [[1]]),
        "ground_truth[0]: must be an object with exactly one function name",
    ),
    "ground_truth_calls_a_function_not_offered": (
        SIMPLE_ROW,
        set_key("ground_truth", [{"f": {"base": [10]}}]),
        "the ground truth calls 'f', which no function doc offers",
    ),
    "irrelevance_with_a_ground_truth": (
        IRRELEVANCE_ROW,
        set_key("ground_truth", [{"f": {}}]),
        "category 'irrelevance' has no ground truth: it must be null",
    ),
    "unknown_category": (
        SIMPLE_ROW,
        set_key("category", "foo"),
        "the category must be one of simple_python, multiple, parallel, parallel_multiple, "
        "irrelevance, live_simple, live_parallel, got 'foo'",
    ),
    "kind_disagrees_with_category": (
        SIMPLE_ROW,
        set_key("kind", "nocall"),
        "kind must be 'call' for category 'simple_python', got 'nocall'",
    ),
    "function_without_name": (
        SIMPLE_ROW,
        edit_function(lambda function: function.pop("name")),
        "function doc 0: must be an object with a string 'name'",
    ),
    "function_without_parameters": (
        SIMPLE_ROW,
        edit_function(lambda function: function.pop("parameters")),
        "function doc 0: 'calculate_triangle_area': 'parameters' must be an object",
    ),
    "parameters_not_an_object": (
        SIMPLE_ROW,
        edit_function(lambda function: function.__setitem__("parameters", "x")),
        "function doc 0: 'calculate_triangle_area': 'parameters' must be an object",
    ),
    "properties_null": (
        SIMPLE_ROW,
        edit_function(lambda function: function["parameters"].__setitem__("properties", None)),
        "function doc 0: 'calculate_triangle_area': 'properties' must be an object",
    ),
    "property_without_type": (
        SIMPLE_ROW,
        edit_property(lambda schema: schema.pop("type")),
        f"{BASE_PARAMETER}: 'type' must be one of {BFCL_TYPES}, got None",
    ),
    "property_of_unknown_type": (
        SIMPLE_ROW,
        edit_property(lambda schema: schema.__setitem__("type", "widget")),
        f"{BASE_PARAMETER}: 'type' must be one of {BFCL_TYPES}, got 'widget'",
    ),
}


def write_malformed(path: Path, fault: str) -> tuple[Path, str]:
    """A BFCL records file with one row edited by hand; the error expected for it."""
    write_bfcl_records(path)
    index, edit, problem = MALFORMED_BFCL_ROWS[fault]
    records = json.loads(path.read_text())
    edit(records["rows"][index])
    path.write_text(json.dumps(records))
    return path, f"{path}: row {index}: BFCL row: {problem}"


@pytest.mark.parametrize("fault", MALFORMED_BFCL_ROWS)
def test_malformed_bfcl_row_is_refused_by_score(fault, tmp_path):
    path, expected = write_malformed(tmp_path / "edited.json", fault)
    refused(run(["score", path]), expected)


MALFORMED_SAMPLE = ["empty_ground_truth", "properties_null"]


@pytest.mark.parametrize("fault", MALFORMED_SAMPLE)
def test_malformed_bfcl_row_is_refused_by_eval_compare(fault, tmp_path):
    good = write_bfcl_records(tmp_path / "good.json")
    path, expected = write_malformed(tmp_path / "edited.json", fault)
    refused(run(["eval", "--compare", good, path]), expected)


@pytest.mark.parametrize("fault", MALFORMED_SAMPLE)
def test_malformed_bfcl_row_is_refused_by_export(fault, adapter_dir, tmp_path):
    path, expected = write_malformed(tmp_path / "edited.json", fault)
    out = tmp_path / "peft"
    refused(run(["export", "--adapter", adapter_dir, "--out", out, "--results", path]), expected)
    assert not out.exists()


@pytest.mark.parametrize("fault", MALFORMED_SAMPLE)
def test_malformed_bfcl_row_is_skipped_by_report_with_a_note(fault, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    write_bfcl_records(results / "good.json")
    _, expected = write_malformed(results / "edited.json", fault)
    result = run(["report", "--results", results, "--out", tmp_path / "report", "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert f"note: skipped {expected}" in result.output
    assert "(1 conditions" in result.output


def test_valid_bfcl_records_still_score_as_bfcl_does(tmp_path):
    """Every bundled case loads as a records row, and its gold (the first acceptable values)
    passes BFCL's checker except in the four cases where BFCL's own rules reject it (a
    parameter the schema lacks, an empty array); silence passes only irrelevance."""
    cases = load_cases()
    gold = write_records_of(tmp_path / "gold.json", cases, lambda row: row["gold"])
    scored = run(["score", gold, "--json"])
    assert scored.exit_code == 0, scored.output
    failed = [v["id"] for v in json.loads(scored.output)["bfcl"]["verdicts"] if not v["correct"]]
    assert failed == [
        "parallel_multiple_12",
        "parallel_multiple_26",
        "live_simple_106-63-0",
        "live_simple_112-68-0",
    ]

    silent = write_bfcl_records(tmp_path / "silent.json")
    scored = run(["score", silent, "--json"])
    assert scored.exit_code == 0, scored.output
    verdicts = json.loads(scored.output)["bfcl"]["verdicts"]
    expected = [
        (case.category, True, None)
        if case.category == "irrelevance"
        else (case.category, False, "no_call")
        for case in load_cases(limit_per_category=1)
    ]
    assert [(v["category"], v["correct"], v["failed_check"]) for v in verdicts] == expected
