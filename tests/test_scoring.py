"""Scoring: the seed's numbers reproduced from its own records, the parse rule, strict mode,
Wilson intervals, records validation and the `score` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from eval.cli import score_command
from eval.records import RecordsError, load_records, write_records
from eval.scoring import (
    describe_rate,
    parse_prediction,
    score_row,
    summarize,
    wilson_interval,
)

SEED = Path(__file__).parent / "fixtures" / "seed-results"
SEED_FILES = [
    "base.json",
    "base-fewshot.json",
    "lora-400.json",
    "lora-ckpt-step400.json",
    "lora-ckpt-step800.json",
    "lora-v2.json",
    "leaked-eval/base.json",
    "leaked-eval/base-fewshot.json",
    "leaked-eval/lora.json",
]
CHECKED_KEYS = (
    "n_call",
    "n_nocall",
    "parse_rate",
    "func_name_acc",
    "args_exact_match",
    "false_call_rate",
)


# ---- the seed's own numbers ---------------------------------------------------------------


@pytest.mark.parametrize("name", SEED_FILES)
def test_seed_mode_reproduces_stored_summary(name: str) -> None:
    stored = json.loads((SEED / name).read_text())["summary"]
    rescored = summarize(load_records(SEED / name).rows, "study")
    # == on floats is bit-for-bit equality: 0.4166666666666667 must come back exactly.
    assert {k: rescored[k] for k in CHECKED_KEYS} == {k: stored[k] for k in CHECKED_KEYS}


def test_blank_line_fallback_is_needed_for_the_seed_numbers() -> None:
    # base.json row 8 is two echoed schemas separated by a blank line; only the text before
    # the blank line parses. Without the fallback the seed's 14/40 parses would be 12/40.
    row = load_records(SEED / "base.json").rows[8]
    assert json.loads(row["gold"])["name"] == "get_news_headlines"
    verdict = score_row(row)
    assert verdict.parsed and verdict.func_name and not verdict.args_exact


# ---- parse_prediction ------------------------------------------------------------------------


def test_parse_plain_call() -> None:
    assert parse_prediction('{"name": "f", "arguments": {}}') == {"name": "f", "arguments": {}}


def test_parse_nested_braces_with_text_around() -> None:
    pred = 'Calling now: {"name": "f", "arguments": {"a": {"b": [1, {"c": 2}]}}} -- done.'
    assert parse_prediction(pred) == {"name": "f", "arguments": {"a": {"b": [1, {"c": 2}]}}}


def test_parse_spans_lines() -> None:
    pred = 'Sure:\n{\n  "name": "f",\n  "arguments": {"x": 1}\n}\nHope that helps.'
    assert parse_prediction(pred) == {"name": "f", "arguments": {"x": 1}}


def test_parse_two_objects_separated_by_blank_line_takes_the_first() -> None:
    pred = '{"name": "a", "arguments": {}}\n\n{"name": "b", "arguments": {}}'
    assert parse_prediction(pred) == {"name": "a", "arguments": {}}


def test_parse_two_objects_on_adjacent_lines_is_no_parse() -> None:
    # The greedy span holds both objects and there is no blank line to cut at.
    assert parse_prediction('{"name": "a"}\n{"name": "b"}') is None


def test_parse_whitespace_only_line_is_not_a_blank_line() -> None:
    assert parse_prediction('{"name": "a"}\n  \n{"name": "b"}') is None


def test_parse_blank_line_inside_a_valid_object_keeps_the_whole_object() -> None:
    assert parse_prediction('{"name": "a",\n\n"arguments": {"k": 1}}') == {
        "name": "a",
        "arguments": {"k": 1},
    }


def test_parse_invalid_json_head_is_no_parse_even_if_later_part_is_valid() -> None:
    assert parse_prediction('{"name": oops}\n\n{"name": "b", "arguments": {}}') is None


def test_parse_invalid_json() -> None:
    assert parse_prediction("{name: 'f', arguments: {}}") is None


def test_parse_no_braces_or_wrong_order() -> None:
    assert parse_prediction("I can't help with that.") is None
    assert parse_prediction("} backwards {") is None
    assert parse_prediction("") is None


def test_parse_truncated_call_is_no_parse() -> None:
    # Cut off by the token limit: the last "}" closes an inner object only.
    assert parse_prediction('{"name": "f", "arguments": {"a": {"b": 1}') is None


def test_parse_returns_any_json_value() -> None:
    assert parse_prediction("{}") == {}
    assert parse_prediction('[{"a": 1}]') == {"a": 1}


# ---- seed and strict verdicts ------------------------------------------------------------------

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
GOLD = json.dumps({"name": "get_weather", "arguments": {"city": "Tokyo"}})
ECHO = json.dumps(TOOLS[0])


def call_row(pred: str, tools: list | None = None) -> dict:
    row = {"kind": "call", "question": "Weather in Tokyo?", "gold": GOLD, "pred": pred}
    if tools is not None:
        row["tools"] = tools
    return row


def nocall_row(pred: str, tools: list | None = None) -> dict:
    row = {"kind": "nocall", "question": "Hello", "gold": "Hi!", "pred": pred}
    if tools is not None:
        row["tools"] = tools
    return row


def test_exact_call_passes_in_both_modes() -> None:
    pred = '{"name": "get_weather", "arguments": {"city": "Tokyo"}}'
    for mode in ("study", "strict"):
        v = score_row(call_row(pred, TOOLS), mode)
        assert (v.parsed, v.func_name, v.args_exact, v.reason) == (True, True, True, "")


def test_args_compare_as_parsed_json_not_text() -> None:
    v = score_row(call_row('{"arguments": {"city": "Tokyo"}, "name": "get_weather"}'))
    assert v.args_exact
    assert not score_row(
        call_row('{"name": "get_weather", "arguments": {"city": "Kyoto"}}')
    ).args_exact


def test_schema_echo_counts_in_seed_mode_not_in_strict() -> None:
    seed = score_row(call_row(ECHO, TOOLS), "study")
    assert (seed.parsed, seed.func_name, seed.args_exact) == (True, True, False)
    strict = score_row(call_row(ECHO, TOOLS), "strict")
    assert (strict.parsed, strict.func_name, strict.reason) == (False, False, "schema_echo")
    # Without the tool list the echo is still recognised by its keys.
    assert score_row(call_row(ECHO), "strict").reason == "schema_echo"
    assert score_row(nocall_row(ECHO), "study").false_call
    assert not score_row(nocall_row(ECHO), "strict").false_call


def test_strict_rejects_tool_not_in_list() -> None:
    pred = '{"name": "get_forecast", "arguments": {"city": "Tokyo"}}'
    assert score_row(nocall_row(pred, TOOLS), "study").false_call
    strict = score_row(nocall_row(pred, TOOLS), "strict")
    assert (strict.false_call, strict.reason) == (False, "unknown_tool")
    # Unknown tools cannot be detected when the row does not record its tools.
    assert score_row(nocall_row(pred), "strict").false_call


def test_strict_accepts_openai_style_tool_list() -> None:
    tools = [{"type": "function", "function": TOOLS[0]}]
    pred = '{"name": "get_weather", "arguments": {"city": "Tokyo"}}'
    assert score_row(call_row(pred, tools), "strict").args_exact


def test_strict_requires_arguments_object() -> None:
    missing = score_row(call_row('{"name": "get_weather"}'), "strict")
    assert (missing.parsed, missing.reason) == (False, "arguments_missing")
    assert score_row(call_row('{"name": "get_weather"}'), "study").func_name
    # glaive quotes arguments as a JSON string; a call must carry an object.
    quoted = '{"name": "get_weather", "arguments": "{\\"city\\": \\"Tokyo\\"}"}'
    assert score_row(call_row(quoted), "strict").reason == "arguments_not_object"


def test_non_call_json_is_not_a_call_in_either_mode() -> None:
    for mode in ("study", "strict"):
        assert score_row(nocall_row('{"answer": 42}'), mode).false_call is False
        assert score_row(call_row('{"answer": 42}'), mode).reason == "not_a_call"


def test_summarize_hand_built_rows() -> None:
    rows = [
        call_row('{"name": "get_weather", "arguments": {"city": "Tokyo"}}', TOOLS),  # all pass
        call_row(ECHO, TOOLS),  # seed: parse + name; strict: nothing
        call_row('{"name": "get_time", "arguments": {}}', TOOLS),  # seed: parse; strict: none
        call_row("It is sunny.", TOOLS),  # nothing
        nocall_row('{"name": "get_weather", "arguments": {"city": "Paris"}}', TOOLS),  # false call
        nocall_row("Hello!", TOOLS),
    ]
    seed = summarize(rows, "study", condition="hand", minutes=0.5)
    assert (seed["condition"], seed["minutes"], seed["mode"]) == ("hand", 0.5, "study")
    assert (seed["n_call"], seed["n_nocall"]) == (4, 2)
    assert (seed["parse_rate"], seed["func_name_acc"], seed["args_exact_match"]) == (
        3 / 4,
        2 / 4,
        1 / 4,
    )
    assert seed["false_call_rate"] == 1 / 2
    assert seed["counts"]["parse_rate"] == [3, 4]
    assert "strict_tool_check" not in seed
    strict = summarize(rows, "strict")
    assert (strict["parse_rate"], strict["func_name_acc"], strict["args_exact_match"]) == (
        1 / 4,
        1 / 4,
        1 / 4,
    )
    assert strict["false_call_rate"] == 1 / 2
    assert strict["strict_tool_check"] is True


def test_strict_summary_says_when_tools_were_not_recorded() -> None:
    rows = load_records(SEED / "base.json").rows
    strict = summarize(rows, "strict")
    assert strict["strict_tool_check"] is False
    # Every one of the base model's 13 "right name" answers (GUIDE: 32.5%) is an echoed schema.
    assert summarize(rows, "study")["counts"]["func_name_acc"] == [13, 40]
    assert strict["counts"]["func_name_acc"] == [0, 40]


def test_summary_intervals_cover_every_rate() -> None:
    summary = summarize(load_records(SEED / "lora-v2.json").rows)
    assert summary["counts"]["false_call_rate"] == [2, 12]
    for key, (lo, hi) in summary["intervals"].items():
        assert 0.0 <= lo <= summary[key] <= hi <= 1.0


def test_empty_class_gives_none_rate() -> None:
    summary = summarize([nocall_row("Hello!")])
    assert summary["n_call"] == 0
    assert summary["parse_rate"] is None and summary["intervals"]["parse_rate"] is None
    assert summary["false_call_rate"] == 0.0


# ---- Wilson intervals -------------------------------------------------------------------------


def test_wilson_all_pass_and_none_pass_closed_forms() -> None:
    # With p = 1 the Wilson bounds reduce to lo = n / (n + z^2); with p = 0, hi = z^2 / (n + z^2).
    z2 = 1.96**2
    lo, hi = wilson_interval(40, 40)
    assert hi == 1.0
    assert lo == pytest.approx(40 / (40 + z2), abs=1e-12)
    lo, hi = wilson_interval(0, 12)
    assert lo == 0.0
    assert hi == pytest.approx(z2 / (12 + z2), abs=1e-12)


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score).
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
     (1, 29, 0.0061, 0.1718)],
)  # fmt: skip
def test_wilson_textbook_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


@pytest.mark.parametrize(("k", "n"), [(2, 12), (13, 40), (36, 40), (1, 3)])
def test_wilson_bounds_solve_the_score_equation(k: int, n: int) -> None:
    # The Wilson bounds are the p where the score test is exactly at z: (k/n - p)^2 = z^2 p(1-p)/n.
    z = 1.96
    for p in wilson_interval(k, n, z):
        assert (k / n - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-9)


def test_wilson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(5, 4)


def test_describe_rate_phrases_extremes_honestly() -> None:
    # 40 / (40 + 1.96^2) = 0.91238 -> the seed's "40/40 supports only >= 91%".
    assert describe_rate(40, 40) == "40/40: 95% CI lower bound 91.2%"
    assert describe_rate(0, 12) == "0/12: 95% CI upper bound 24.3%"  # 3.8416 / 15.8416
    assert describe_rate(2, 12).startswith("2/12 = 16.7% (95% CI ")


# ---- records files -----------------------------------------------------------------------------


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"kind": "call", "gold": GOLD}, "row 1: missing key(s) pred"),
        ({"kind": "maybe", "gold": "x", "pred": "y"}, "row 1: kind must be one of call, nocall"),
        ({"kind": "call", "gold": "not json", "pred": "y"}, "row 1: gold of a call row"),
        ({"kind": "nocall", "gold": "x", "pred": 3}, "row 1: 'pred' must be a string"),
        ({"kind": "call", "gold": GOLD, "pred": "", "tools": "x"}, "row 1: 'tools' must be"),
    ],
)
def test_load_records_names_file_and_row(tmp_path: Path, row: dict, message: str) -> None:
    path = write_json(tmp_path / "bad.json", {"summary": {}, "rows": [call_row("{}"), row]})
    with pytest.raises(RecordsError) as info:
        load_records(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_load_records_rejects_bad_top_level(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match="missing top-level key 'rows'"):
        load_records(write_json(tmp_path / "a.json", {"summary": {}}))
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(RecordsError, match=r"b\.json: not valid JSON"):
        load_records(tmp_path / "b.json")


def test_leaked_eval_rows_without_question_load() -> None:
    records = load_records(SEED / "leaked-eval" / "lora.json")
    assert len(records.rows) == 52 and "question" not in records.rows[0]
    assert records.condition == "lora"


def test_write_records_round_trip_and_validation(tmp_path: Path) -> None:
    rows = [call_row(ECHO, TOOLS), nocall_row("Hello!")]
    path = tmp_path / "out" / "r.json"
    write_records(path, {"condition": "x"}, rows)
    again = load_records(path)
    assert again.rows == rows and again.summary == {"condition": "x"}
    with pytest.raises(RecordsError, match="row 0: missing key"):
        write_records(tmp_path / "bad.json", {}, [{"kind": "call"}])
    assert not (tmp_path / "bad.json").exists()


# ---- the score command ---------------------------------------------------------------------------


def test_score_command_table() -> None:
    result = CliRunner().invoke(score_command, [str(SEED / "base.json")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    parse_line = next(line for line in lines if line.startswith("parse_rate"))
    # 14/40 from the seed's 35.0%. By hand: centre (0.35 + 0.04802) / 1.09604 = 0.36315,
    # half-width 1.96 * sqrt(0.0056875 + 0.00060025) / 1.09604 = 0.14180 -> [22.1%, 50.5%].
    assert "35.0%" in parse_line and "14/40" in parse_line
    assert "[22.1%, 50.5%]" in parse_line
    assert "stored summary: identical to the rescore" in result.output


def test_score_command_all_pass_honesty_line() -> None:
    result = CliRunner().invoke(score_command, [str(SEED / "lora-v2.json")])
    assert result.exit_code == 0, result.output
    assert "args_exact_match: 40/40: 95% CI lower bound 91.2%" in result.output


def test_score_command_json_strict() -> None:
    result = CliRunner().invoke(
        score_command, [str(SEED / "base.json"), "--mode", "strict", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["summary"]["mode"] == "strict"
    assert data["summary"]["func_name_acc"] == 0.0
    assert data["summary"]["strict_tool_check"] is False
    assert data["stored_summary"]["func_name_acc"] == 0.325
    assert data["mismatches"] is None
    # Row 0: text, then the get_poem schema echoed (parsed by the seed rule, not a call here).
    assert data["verdicts"][0]["reason"] == "schema_echo"
    assert data["verdicts"][0]["parsed"] is False


def test_score_command_json_study_has_no_mismatch() -> None:
    result = CliRunner().invoke(score_command, [str(SEED / "leaked-eval" / "base.json"), "--json"])
    data = json.loads(result.output)
    assert data["mismatches"] == {} and data["summary"]["mode"] == "study"
    # `--mode seed`, the mode's earlier name, still means the study's rule.
    alias = CliRunner().invoke(
        score_command, [str(SEED / "leaked-eval" / "base.json"), "--json", "--mode", "seed"]
    )
    assert json.loads(alias.output) == data
    assert data["summary"]["false_call_rate"] == 0.08333333333333333
    # By hand for 1/12: centre 0.18438, half-width 0.16951.
    lo, hi = data["summary"]["intervals"]["false_call_rate"]
    assert (lo, hi) == pytest.approx((0.01487, 0.35389), abs=5e-5)


def test_score_command_reports_bad_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "bad.json", {"summary": {}, "rows": [{"kind": "call"}]})
    result = CliRunner().invoke(score_command, [str(path)])
    assert result.exit_code != 0
    assert "bad.json: row 0: missing key(s) gold, pred" in result.output


def test_score_command_flags_a_tampered_summary(tmp_path: Path) -> None:
    data = json.loads((SEED / "lora-400.json").read_text())
    data["summary"]["args_exact_match"] = 0.975  # the leaked number, on the clean records
    path = write_json(tmp_path / "tampered.json", data)
    result = CliRunner().invoke(score_command, [str(path)])
    assert "args_exact_match: stored 0.975, rescored 0.9" in result.output
