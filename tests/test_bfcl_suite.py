"""The BFCL suite's data layer: the bundled files load with BFCL's counts, types map to JSON
Schema, each category renders to an eval row of the training format, bad inputs name the file,
and the "never seen in training" measure counts what it should."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data.call_format import call_text
from data.prompt import build_system_prompt, example_row, render_tools
from data.store import validate_row
from eval.bfcl import (
    BFCL_DIR,
    CATEGORIES,
    BfclCase,
    case_row,
    load_cases,
    seen_in_training,
    to_json_schema,
    to_tool,
)
from mlx_plamo3.errors import InputError

# Cases per category, counted in the files (one JSON object per line).
EXPECTED_COUNTS = {
    "simple_python": 400,
    "multiple": 200,
    "parallel": 200,
    "parallel_multiple": 200,
    "irrelevance": 240,
    "live_simple": 258,
    "live_parallel": 16,
}
MAX_FILE_BYTES = 1_000_000


@pytest.fixture(scope="module")
def all_cases() -> list[BfclCase]:
    return load_cases()


def test_categories_are_the_seven_in_order():
    assert CATEGORIES == tuple(EXPECTED_COUNTS)


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_loads_with_its_count(category):
    cases = load_cases(category)
    assert len(cases) == EXPECTED_COUNTS[category]
    assert len({c.id for c in cases}) == len(cases)
    assert all(c.category == category for c in cases)
    if category == "irrelevance":
        assert all(c.ground_truth is None for c in cases)
    else:
        assert all(c.ground_truth for c in cases)


def test_all_categories_load_in_order(all_cases):
    assert len(all_cases) == sum(EXPECTED_COUNTS.values()) == 1514
    order = [c.category for c in all_cases]
    assert sorted(set(order), key=order.index) == list(CATEGORIES)


def test_bundled_files_are_small_and_licensed():
    files = sorted(p for p in BFCL_DIR.rglob("*") if p.is_file())
    assert all(p.stat().st_size < MAX_FILE_BYTES for p in files)
    assert "Apache License" in (BFCL_DIR / "LICENSE").read_text(encoding="utf-8")
    assert (BFCL_DIR / "PROVENANCE.md").is_file()


def test_limit_per_category_takes_the_first_cases():
    cases = load_cases(("simple_python", "irrelevance"), limit_per_category=2)
    assert [c.id for c in cases] == [
        "simple_python_0",
        "simple_python_1",
        "irrelevance_0",
        "irrelevance_1",
    ]


# --- the type mapping ----------------------------------------------------------------------


def test_types_map_to_json_schema_recursively():
    bfcl = {
        "type": "dict",
        "required": ["point", "options"],
        "properties": {
            "point": {"type": "tuple", "items": {"type": "float"}, "description": "x, y"},
            "count": {"type": "integer"},
            "flag": {"type": "boolean", "default": False},
            "anything": {"type": "any", "description": "Whatever."},
            "untyped": {"description": "No type given."},
            "odd": {"type": "HashSet"},
            "options": {
                "type": "dict",
                "properties": {
                    "rate": {"type": "float", "format": "percent"},
                    "rows": {
                        "type": "array",
                        "items": {"type": "dict", "properties": {"cells": {"type": "tuple"}}},
                    },
                    "grid": {"type": "list", "items": {"type": "list", "items": {"type": "any"}}},
                },
            },
            "scores": {"type": "dict", "additionalProperties": {"type": "float"}},
        },
    }
    expected = {
        "type": "object",
        "required": ["point", "options"],
        "properties": {
            "point": {
                "type": "array",
                "items": {"type": "number", "format": "float"},
                "description": "x, y",
            },
            "count": {"type": "integer"},
            "flag": {"type": "boolean", "default": False},
            "anything": {"type": "string", "description": "Whatever."},
            "untyped": {"description": "No type given.", "type": "string"},
            "odd": {"type": "string"},
            "options": {
                "type": "object",
                "properties": {
                    "rate": {"type": "number", "format": "percent"},
                    "rows": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"cells": {"type": "array"}}},
                    },
                    "grid": {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "scores": {
                "type": "object",
                "additionalProperties": {"type": "number", "format": "float"},
            },
        },
    }
    before = json.dumps(bfcl, sort_keys=True)
    assert to_json_schema(bfcl) == expected
    assert json.dumps(bfcl, sort_keys=True) == before  # the input is left alone


def test_to_tool_keeps_name_and_description_and_makes_parameters_an_object():
    doc = {
        "name": "math.hypot",
        "description": "Hypotenuse.",
        "parameters": {"type": "dict", "properties": {"x": {"type": "float"}}, "required": ["x"]},
    }
    assert to_tool(doc) == {
        "name": "math.hypot",
        "description": "Hypotenuse.",
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "number", "format": "float"}},
            "required": ["x"],
        },
    }
    assert to_tool({"name": "ping", "description": ""})["parameters"] == {
        "type": "object",
        "properties": {},
    }


def test_no_bfcl_type_survives_in_the_tools(all_cases):
    allowed = {"object", "array", "string", "integer", "number", "boolean"}

    def types(schema):
        if isinstance(schema, dict):
            if isinstance(schema.get("type"), str):
                yield schema["type"]
            for sub in (schema.get("properties") or {}).values():
                yield from types(sub)
            yield from types(schema.get("items"))
            yield from types(schema.get("additionalProperties"))

    found = {t for c in all_cases for tool in c.tools for t in types(tool["parameters"])}
    assert found <= allowed


# --- rows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_a_real_row_per_category_renders_in_the_training_form(category):
    case = load_cases(category, limit_per_category=1)[0]
    row = case_row(case)
    validate_row(row, case.id)
    system, user, assistant = row["messages"]
    assert system["content"] == build_system_prompt(render_tools(case.tools))
    for tool in case.tools:
        assert json.dumps(tool, indent=4) in system["content"]
    assert '"type": "dict"' not in system["content"]
    assert user["content"] == case.messages[-1]["content"]
    assert assistant["content"] == row["gold"]
    assert row["tools"] == case.tools
    assert (row["suite"], row["category"], row["id"]) == ("bfcl", category, case.id)
    assert row["functions"] == case.functions
    assert row["ground_truth"] == case.ground_truth
    names = {f["name"] for f in case.functions}
    if category == "irrelevance":
        assert (row["kind"], row["gold"]) == ("nocall", "")
        return
    assert row["kind"] == "call"
    gold = json.loads(row["gold"])
    calls = gold if category in ("parallel", "parallel_multiple", "live_parallel") else [gold]
    assert isinstance(calls, list) and len(calls) == len(case.ground_truth)
    for call in calls:
        assert set(call) == {"name", "arguments"}
        assert call["name"] in names


def test_every_row_is_valid_and_every_gold_parses(all_cases):
    for case in all_cases:
        row = case_row(case)
        validate_row(row, case.id)
        if row["kind"] == "call":
            json.loads(row["gold"])


def test_gold_texts_written_by_hand():
    first = {c.category: c for c in load_cases(limit_per_category=1)}
    # "unit": ["units", ""] -> the first acceptable value, not the optional marker.
    assert case_row(first["simple_python"])["gold"] == (
        '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, '
        '"unit": "units"}}'
    )
    # "" first: skipped, True taken.
    assert case_row(first["multiple"])["gold"] == call_text(
        "triangle_properties.get",
        {
            "side1": 5,
            "side2": 4,
            "side3": 3,
            "get_area": True,
            "get_perimeter": True,
            "get_angles": True,
        },
    )
    assert case_row(first["parallel"])["gold"] == (
        '[{"name": "spotify.play", "arguments": {"artist": "Taylor Swift", "duration": 20}}, '
        '{"name": "spotify.play", "arguments": {"artist": "Maroon 5", "duration": 15}}]'
    )


def _case(category, ground_truth, functions=None, messages=None, case_id="t_0"):
    functions = functions or [
        {"name": "f", "description": "F.", "parameters": {"type": "dict", "properties": {}}}
    ]
    return BfclCase(
        id=case_id,
        category=category,
        messages=messages or [{"role": "user", "content": "Do f."}],
        functions=functions,
        tools=[to_tool(f) for f in functions],
        ground_truth=ground_truth,
    )


def test_gold_resolves_nested_alternatives_and_drops_optional_parameters():
    truth = [
        {
            "f": {
                "only_optional": [""],
                "body": [{"mode": ["", "COOL"], "bio": [""], "temp": [22, 22.0]}],
                "rows": [[{"field": ["age"], "op": [">", "gt"]}]],
                "plain_list": [[3, 5], [5, 3]],
                "empty_ok": [],
            }
        }
    ]
    gold = json.loads(case_row(_case("simple_python", truth))["gold"])
    assert gold == {
        "name": "f",
        "arguments": {
            "body": {"mode": "COOL", "temp": 22},
            "rows": [{"field": "age", "op": ">"}],
            "plain_list": [3, 5],
            "empty_ok": [],
        },
    }


def test_a_system_message_of_the_question_follows_the_training_prompt():
    case = next(c for c in load_cases("live_simple") if c.id == "live_simple_183-108-0")
    system = case_row(case)["messages"][0]["content"]
    assert system == (
        build_system_prompt(render_tools(case.tools))
        + "\n\nPlease act like the current date is 2024/02/21"
    )


def test_a_malformed_ground_truth_names_the_case():
    with pytest.raises(InputError, match=r"t_0.*expects one call"):
        case_row(_case("simple_python", [{"f": {}}, {"f": {}}]))
    with pytest.raises(InputError, match=r"t_0.*must be a list"):
        case_row(_case("simple_python", [{"f": {"x": 3}}]))


# --- errors --------------------------------------------------------------------------------


def test_unknown_category_names_the_valid_ones():
    with pytest.raises(InputError, match="simple_java") as info:
        load_cases(("simple_python", "simple_java"))
    for category in CATEGORIES:
        assert category in str(info.value)


def test_a_missing_question_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"BFCL_v4_parallel\.json: BFCL file missing"):
        load_cases("parallel", root=tmp_path)


def test_a_missing_answer_file_is_named(tmp_path):
    shutil.copy(BFCL_DIR / "BFCL_v4_parallel.json", tmp_path)
    with pytest.raises(InputError, match=r"possible_answer/BFCL_v4_parallel\.json"):
        load_cases("parallel", root=tmp_path)
    # irrelevance needs no answer file.
    shutil.copy(BFCL_DIR / "BFCL_v4_irrelevance.json", tmp_path)
    assert len(load_cases("irrelevance", root=tmp_path)) == 240


def test_an_id_without_a_possible_answer_is_named(tmp_path):
    (tmp_path / "possible_answer").mkdir()
    shutil.copy(BFCL_DIR / "BFCL_v4_live_parallel.json", tmp_path)
    answers = (BFCL_DIR / "possible_answer" / "BFCL_v4_live_parallel.json").read_text()
    kept = [line for line in answers.splitlines() if '"live_parallel_1-0-1"' not in line]
    (tmp_path / "possible_answer" / "BFCL_v4_live_parallel.json").write_text("\n".join(kept))
    with pytest.raises(InputError, match="no possible answer for id 'live_parallel_1-0-1'"):
        load_cases("live_parallel", root=tmp_path)


def test_a_broken_line_and_a_multi_turn_question_are_named(tmp_path):
    path = Path(tmp_path) / "BFCL_v4_irrelevance.json"
    path.write_text('{"id": "irrelevance_0", "question": [[{"role": "user", "content": "hi"}]]\n')
    with pytest.raises(InputError, match=r"BFCL_v4_irrelevance\.json:1: not JSON"):
        load_cases("irrelevance", root=tmp_path)
    turn = [{"role": "user", "content": "hi"}]
    entry = {"id": "irrelevance_0", "question": [turn, turn], "function": []}
    path.write_text(json.dumps(entry) + "\n")
    with pytest.raises(InputError, match=r":1 \(irrelevance_0\): .*single-turn only"):
        load_cases("irrelevance", root=tmp_path)


def test_a_negative_limit_is_refused():
    with pytest.raises(InputError, match="limit_per_category"):
        load_cases(limit_per_category=-1)


# --- seen in training ----------------------------------------------------------------------


def _doc(name):
    return {"name": name, "description": "", "parameters": {"type": "dict", "properties": {}}}


def test_seen_in_training_counts_names_and_questions_by_hand():
    cases = [
        _case("simple_python", [{"alpha": {}}], [_doc("alpha")], case_id="a"),
        _case(
            "multiple",
            [{"beta": {}}],
            [_doc("beta"), _doc("gamma")],
            [{"role": "user", "content": "What is  the Weather in Paris?"}],
            case_id="b",
        ),
        _case("irrelevance", None, [_doc("delta"), _doc("alpha")], case_id="c"),
    ]
    tools_alpha = [{"name": "alpha", "description": "", "parameters": {"type": "object"}}]
    with_tools = example_row(render_tools(tools_alpha), "Unrelated.", "Hi.", "nocall", tools_alpha)
    # No "tools" key: the names come from the system prompt's tool JSON and the reply's call.
    gamma = [{"name": "gamma", "description": "", "parameters": {"type": "object"}}]
    no_tools = example_row(
        render_tools(gamma),
        "what is the weather in paris?",
        call_text("epsilon", {}),
        "call",
        gamma,
    )
    del no_tools["tools"]
    # OpenAI-style tools count too; "beta" only appears as a parameter name: not a tool.
    openai_style = {
        "messages": [
            {"role": "system", "content": "x"},
            {"role": "user", "content": "Another question."},
            {"role": "assistant", "content": "ok"},
        ],
        "kind": "nocall",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "zeta",
                    "parameters": {"type": "object", "properties": {"beta": {"type": "string"}}},
                },
            }
        ],
    }
    report = seen_in_training(cases, [with_tools, no_tools, openai_style])
    assert report == {
        "n_train_rows": 3,
        "n_train_tool_names": 4,  # alpha, gamma, epsilon, zeta
        "n_cases": 3,
        "n_functions": 4,  # alpha, beta, gamma, delta
        "n_functions_seen": 2,
        "functions_seen": ["alpha", "gamma"],
        "n_questions_seen": 1,
        "questions_seen": ["What is  the Weather in Paris?"],
    }


def test_seen_in_training_of_nothing():
    report = seen_in_training(load_cases("live_parallel"), [])
    assert report["n_cases"] == 16
    assert report["n_functions_seen"] == report["n_questions_seen"] == 0
    assert report["functions_seen"] == report["questions_seen"] == []
