"""The BFCL v4 AST checker re-implementation: one test per rule, expected verdicts written by hand
from BFCL's rules, plus real BFCL rows for every category we score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval.bfcl_checker import BfclVerdict, check_calls, parse_calls, standardize_string

_PROJECT_BFCL_DIR = Path(__file__).resolve().parents[1] / "data" / "bfcl"
BFCL_DIR = _PROJECT_BFCL_DIR if _PROJECT_BFCL_DIR.exists() else Path("/work/shared/reference/bfcl")

requires_bfcl_data = pytest.mark.skipif(
    not (BFCL_DIR / "BFCL_v4_simple_python.json").exists(), reason="BFCL v4 data not available"
)


def function(name: str, properties: dict[str, Any], required: list[str] | None = None) -> dict:
    """A BFCL function doc."""
    return {
        "name": name,
        "description": "",
        "parameters": {"type": "dict", "properties": properties, "required": required or []},
    }


def typed(bfcl_type: str, items: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": bfcl_type, "description": ""}
    if items is not None:
        schema["items"] = {"type": items}
    return schema


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def check_one(
    schema: dict[str, Any], acceptable: list[Any], value: Any, required: bool = True
) -> BfclVerdict:
    """A simple question with one parameter `p` of `schema`, gold `acceptable`, given `value`."""
    functions = [function("f", {"p": schema}, ["p"] if required else [])]
    return check_calls("simple_python", functions, [{"f": {"p": acceptable}}], [call("f", p=value)])


def assert_passes(verdict: BfclVerdict) -> None:
    assert verdict == BfclVerdict(correct=True, fair=True, failed_check=None, detail="")


def assert_fails(verdict: BfclVerdict, check: str) -> None:
    assert (verdict.correct, verdict.fair, verdict.failed_check) == (False, False, check)
    assert verdict.detail


# ---------------------------------------------------------------- function names


def test_function_name_must_match_exactly() -> None:
    functions = [function("get_weather", {"city": typed("string")}, ["city"])]
    gold = [{"get_weather": {"city": ["Paris"]}}]
    assert_passes(
        check_calls("simple_python", functions, gold, [call("get_weather", city="Paris")])
    )
    assert_fails(
        check_calls("simple_python", functions, gold, [call("Get_Weather", city="Paris")]),
        "wrong_func_name",
    )


def test_dotted_function_name_must_be_emitted_with_its_dots() -> None:
    functions = [function("math.factorial", {"number": typed("integer")}, ["number"])]
    gold = [{"math.factorial": {"number": [5]}}]
    assert_passes(check_calls("simple_python", functions, gold, [call("math.factorial", number=5)]))
    assert_fails(
        check_calls("simple_python", functions, gold, [call("math_factorial", number=5)]),
        "wrong_func_name",
    )


def test_underscore_to_dot_models_must_emit_underscores_for_dots() -> None:
    functions = [function("math.factorial", {"number": typed("integer")}, ["number"])]
    gold = [{"math.factorial": {"number": [5]}}]
    underscored = [call("math_factorial", number=5)]
    dotted = [call("math.factorial", number=5)]
    assert_passes(
        check_calls("simple_python", functions, gold, underscored, underscore_to_dot=True)
    )
    assert_fails(
        check_calls("simple_python", functions, gold, dotted, underscore_to_dot=True),
        "wrong_func_name",
    )


# ---------------------------------------------------------------- parameters present / absent


def test_missing_required_parameter_fails() -> None:
    functions = [function("f", {"a": typed("integer"), "b": typed("integer")}, ["a", "b"])]
    gold = [{"f": {"a": [1], "b": [2]}}]
    assert_fails(
        check_calls("simple_python", functions, gold, [call("f", a=1)]), "missing_required"
    )


def test_parameter_outside_the_schema_is_unexpected() -> None:
    functions = [function("f", {"a": typed("integer")}, ["a"])]
    gold = [{"f": {"a": [1]}}]
    assert_fails(
        check_calls("simple_python", functions, gold, [call("f", a=1, verbose=True)]),
        "unexpected_param",
    )


def test_parameter_in_the_schema_but_absent_from_the_gold_is_unexpected() -> None:
    functions = [function("f", {"a": typed("integer"), "b": typed("integer")}, ["a"])]
    gold = [{"f": {"a": [1]}}]
    assert_fails(
        check_calls("simple_python", functions, gold, [call("f", a=1, b=2)]), "unexpected_param"
    )


def test_required_parameters_are_checked_before_unexpected_ones() -> None:
    functions = [function("f", {"a": typed("integer"), "b": typed("integer")}, ["a", "b"])]
    gold = [{"f": {"a": [1], "b": [2]}}]
    assert_fails(
        check_calls("simple_python", functions, gold, [call("f", zzz=0, a=1)]), "missing_required"
    )


def test_optional_parameter_may_be_omitted_when_empty_string_is_acceptable() -> None:
    functions = [function("f", {"a": typed("integer"), "unit": typed("string")}, ["a"])]
    gold = [{"f": {"a": [1], "unit": ["units", ""]}}]
    assert_passes(check_calls("simple_python", functions, gold, [call("f", a=1)]))
    assert_passes(check_calls("simple_python", functions, gold, [call("f", a=1, unit="units")]))


def test_omitting_a_parameter_the_gold_expects_fails_as_missing_optional() -> None:
    # "unit" is optional in the schema but the gold gives no "" for it.
    functions = [function("f", {"a": typed("integer"), "unit": typed("string")}, ["a"])]
    gold = [{"f": {"a": [1], "unit": ["units"]}}]
    assert_fails(
        check_calls("simple_python", functions, gold, [call("f", a=1)]), "missing_optional"
    )


def test_the_first_failing_argument_in_the_order_given_decides_the_failed_check() -> None:
    functions = [function("f", {"a": typed("integer"), "b": typed("string")}, ["a", "b"])]
    gold = [{"f": {"a": [1], "b": ["x"]}}]
    type_first = [{"name": "f", "arguments": {"a": "1", "b": "y"}}]
    value_first = [{"name": "f", "arguments": {"b": "y", "a": "1"}}]
    assert_fails(check_calls("simple_python", functions, gold, type_first), "type_mismatch")
    assert_fails(check_calls("simple_python", functions, gold, value_first), "value_mismatch")


# ---------------------------------------------------------------- types


def test_int_is_accepted_for_a_float_at_the_top_level() -> None:
    assert_passes(check_one(typed("float"), [5.0], 5))


def test_int_inside_a_float_array_is_a_type_mismatch() -> None:
    # BFCL issue #1049: the element check has no int-to-float step.
    assert_fails(check_one(typed("array", "float"), [[12.0, 15.0]], [12, 15]), "type_mismatch")
    assert_passes(check_one(typed("array", "float"), [[12.0, 15.0]], [12.0, 15.0]))


def test_float_for_an_integer_is_a_type_mismatch() -> None:
    assert_fails(check_one(typed("integer"), [5], 5.0), "type_mismatch")


def test_bool_is_not_an_integer() -> None:
    assert_fails(check_one(typed("integer"), [1], True), "type_mismatch")


def test_numeric_string_for_an_integer_is_a_type_mismatch() -> None:
    assert_fails(check_one(typed("integer"), [10], "10"), "type_mismatch")


def test_tuple_type_takes_a_list_and_checks_its_elements() -> None:
    assert_passes(check_one(typed("tuple", "float"), [[33.4484, -112.074]], [33.4484, -112.074]))
    assert_fails(
        check_one(typed("tuple", "float"), [[33.4484, -112.074]], [33, -112]), "type_mismatch"
    )


def test_any_type_takes_a_string_compared_after_standardisation() -> None:
    assert_passes(check_one(typed("any"), ["my_data"], "My Data"))


def test_any_type_takes_a_non_string_only_of_the_gold_type_compared_exactly() -> None:
    assert_passes(check_one(typed("any"), [5], 5))
    assert_fails(check_one(typed("any"), ["5"], 5), "type_mismatch")


def test_value_of_the_gold_type_is_a_variable_compared_without_standardisation() -> None:
    # The gold gives a string (a variable name) for an array parameter.
    acceptable = ["data['sales']"]
    assert_passes(check_one(typed("array", "float"), acceptable, "data['sales']"))
    assert_fails(check_one(typed("array", "float"), acceptable, "DATA['sales']"), "value_mismatch")


def test_null_is_accepted_when_the_gold_lists_null() -> None:
    assert_passes(check_one(typed("string"), ["", None], None, required=False))
    assert_fails(check_one(typed("string"), ["", None], "None", required=False), "value_mismatch")


def test_null_is_a_type_mismatch_when_the_gold_does_not_list_it() -> None:
    assert_fails(check_one(typed("string"), ["Paris"], None), "type_mismatch")


def test_element_types_are_checked_one_level_deep_only() -> None:
    # An array of arrays: the inner lists are checked to be lists, their contents are not typed.
    assert_passes(check_one(typed("array", "array"), [[[10, 20], [30, 40]]], [[10, 20], [30, 40]]))
    assert_fails(check_one(typed("array", "array"), [[[10, 20]]], [10, 20]), "type_mismatch")


def test_optional_array_skips_the_element_type_check_and_fails_on_value() -> None:
    # With "" acceptable the element check passes, so a wrong element type is a value mismatch.
    assert_fails(check_one(typed("array", "string"), [["a"], ""], [1], False), "value_mismatch")


# ---------------------------------------------------------------- values: strings


def test_string_standardisation_ignores_case_and_punctuation() -> None:
    assert standardize_string("New-York, N.Y./*^_ X") == "newyorknyx"
    assert_passes(check_one(typed("string"), ["New York, NY"], "new_york-ny."))
    assert_passes(check_one(typed("string"), ["April 1, 2024"], "april 1 2024"))


def test_string_standardisation_keeps_other_punctuation_tabs_and_newlines() -> None:
    assert_fails(check_one(typed("string"), ["Paris"], "Paris!"), "value_mismatch")
    assert_fails(check_one(typed("string"), ["New York"], "New\tYork"), "value_mismatch")
    assert_fails(check_one(typed("string"), ["New York"], "New\nYork"), "value_mismatch")


def test_string_standardisation_treats_single_and_double_quotes_alike() -> None:
    assert_passes(check_one(typed("string"), ["it's"], 'it"s'))


def test_wrong_string_value_is_a_value_mismatch() -> None:
    assert_fails(check_one(typed("string"), ["Paris", "Paris, France"], "London"), "value_mismatch")


# ---------------------------------------------------------------- values: numbers, booleans


def test_number_outside_the_acceptable_values_is_a_value_mismatch() -> None:
    assert_fails(check_one(typed("integer"), [5, 6], 7), "value_mismatch")
    assert_passes(check_one(typed("integer"), [5, 6], 6))


def test_boolean_is_compared_exactly() -> None:
    assert_passes(check_one(typed("boolean"), [True], True))
    assert_fails(check_one(typed("boolean"), [True], False), "value_mismatch")
    assert_fails(check_one(typed("boolean"), [True], "true"), "type_mismatch")


# ---------------------------------------------------------------- values: lists


def test_list_elements_are_standardised_and_order_matters() -> None:
    schema = typed("array", "string")
    assert_passes(check_one(schema, [["New York", "Los Angeles"]], ["new york", "LOS-ANGELES"]))
    assert_fails(
        check_one(schema, [["New York", "Los Angeles"]], ["Los Angeles", "New York"]),
        "value_mismatch",
    )


def test_list_of_another_length_is_a_value_mismatch() -> None:
    assert_fails(check_one(typed("array", "integer"), [[3, 5]], [3, 5, 7]), "value_mismatch")


def test_empty_list_is_accepted_when_the_array_is_optional() -> None:
    # An acceptable "" counts as the empty list.
    assert_passes(check_one(typed("array", "integer"), [[3, 5], ""], [], required=False))
    assert_fails(check_one(typed("array", "integer"), [[3, 5]], []), "value_mismatch")


def test_strings_inside_nested_lists_are_compared_exactly() -> None:
    schema = typed("array", "array")
    assert_passes(check_one(schema, [[["A b"]]], [["A b"]]))
    assert_fails(check_one(schema, [[["A b"]]], [["a b"]]), "value_mismatch")


# ---------------------------------------------------------------- values: dicts


def test_dict_values_are_standardised_and_optional_keys_may_be_omitted() -> None:
    acceptable = [{"city": ["New York"], "unit": ["celsius", ""]}]
    assert_passes(check_one(typed("dict"), acceptable, {"city": "new-york"}))
    assert_passes(check_one(typed("dict"), acceptable, {"unit": "Celsius", "city": "New York"}))


def test_dict_with_an_unexpected_key_is_a_value_mismatch() -> None:
    acceptable = [{"city": ["New York"]}]
    assert_fails(
        check_one(typed("dict"), acceptable, {"city": "New York", "x": 1}), "value_mismatch"
    )


def test_dict_missing_a_needed_key_is_a_value_mismatch() -> None:
    acceptable = [{"city": ["New York"], "unit": ["celsius"]}]
    assert_fails(check_one(typed("dict"), acceptable, {"city": "New York"}), "value_mismatch")


def test_dict_values_are_compared_by_equality_so_an_int_matches_a_float() -> None:
    acceptable = [{"min": [300000.0], "max": [400000.0]}]
    assert_passes(check_one(typed("dict"), acceptable, {"min": 300000, "max": 400000}))


def test_lists_inside_dicts_are_compared_without_standardisation() -> None:
    acceptable = [{"Alex": [["A of spades", "K of spades"]]}]
    assert_passes(check_one(typed("dict"), acceptable, {"Alex": ["A of spades", "K of spades"]}))
    assert_fails(
        check_one(typed("dict"), acceptable, {"Alex": ["a of spades", "K of spades"]}),
        "value_mismatch",
    )


def test_dict_is_accepted_if_it_matches_any_acceptable_dict() -> None:
    acceptable = ["", {"a": [1]}, {"b": [2]}]
    assert_passes(check_one(typed("dict"), acceptable, {"b": 2}, required=False))
    assert_fails(check_one(typed("dict"), acceptable, {"a": 2}, required=False), "value_mismatch")


def test_list_of_dicts_is_compared_pairwise_in_order() -> None:
    schema = typed("array", "dict")
    acceptable = [[{"name": ["Chester"], "age": [42]}, {"name": ["Jane"], "age": [43]}]]
    in_order = [{"name": "chester", "age": 42}, {"name": "Jane", "age": 43}]
    assert_passes(check_one(schema, acceptable, in_order))
    assert_fails(check_one(schema, acceptable, in_order[::-1]), "value_mismatch")


def test_list_of_dicts_of_another_length_is_a_value_mismatch() -> None:
    acceptable = [[{"name": ["Chester"]}, {"name": ["Jane"]}]]
    assert_fails(
        check_one(typed("array", "dict"), acceptable, [{"name": "Chester"}]), "value_mismatch"
    )


# ---------------------------------------------------------------- counting and categories


def test_simple_category_needs_exactly_one_call() -> None:
    functions = [function("f", {"a": typed("integer")}, ["a"])]
    gold = [{"f": {"a": [1]}}]
    assert_fails(check_calls("simple_python", functions, gold, [call("f", a=1)] * 2), "wrong_count")
    assert_fails(check_calls("live_simple", functions, gold, []), "wrong_count")


def test_nothing_parseable_is_no_call() -> None:
    functions = [function("f", {"a": typed("integer")}, ["a"])]
    assert_fails(check_calls("simple_python", functions, [{"f": {"a": [1]}}], None), "no_call")


def test_an_item_that_is_not_a_call_is_a_malformed_call() -> None:
    functions = [function("f", {"a": typed("integer")}, ["a"])]
    bad = [{"name": "f", "parameters": {"a": 1}}]
    assert_fails(
        check_calls("simple_python", functions, [{"f": {"a": [1]}}], bad), "malformed_call"
    )


def test_multiple_category_checks_the_one_call_against_the_gold_function() -> None:
    functions = [
        function("circle.area", {"radius": typed("float")}, ["radius"]),
        function("square.area", {"side": typed("float")}, ["side"]),
    ]
    gold = [{"square.area": {"side": [2.0]}}]
    assert_passes(check_calls("multiple", functions, gold, [call("square.area", side=2)]))
    assert_fails(
        check_calls("multiple", functions, gold, [call("circle.area", radius=2.0)]),
        "wrong_func_name",
    )
    assert_fails(
        check_calls("multiple", functions, gold, [call("square.area", side=2)] * 2), "wrong_count"
    )


PLAY = [
    function("spotify.play", {"artist": typed("string"), "duration": typed("integer")}, ["artist"])
]
PLAY_GOLD = [
    {"spotify.play": {"artist": ["Taylor Swift"], "duration": [20]}},
    {"spotify.play": {"artist": ["Maroon 5"], "duration": [15]}},
]


def test_parallel_calls_may_come_in_any_order() -> None:
    swift = call("spotify.play", artist="Taylor Swift", duration=20)
    maroon = call("spotify.play", artist="maroon 5", duration=15)
    assert_passes(check_calls("parallel", PLAY, PLAY_GOLD, [swift, maroon]))
    assert_passes(check_calls("parallel", PLAY, PLAY_GOLD, [maroon, swift]))


def test_parallel_count_must_match() -> None:
    swift = call("spotify.play", artist="Taylor Swift", duration=20)
    assert_fails(check_calls("parallel", PLAY, PLAY_GOLD, [swift]), "wrong_count")
    assert_fails(check_calls("parallel", PLAY, PLAY_GOLD, [swift, swift, swift]), "wrong_count")


def test_parallel_gold_call_without_a_matching_call_is_no_match() -> None:
    swift = call("spotify.play", artist="Taylor Swift", duration=20)
    wrong = call("spotify.play", artist="Maroon 5", duration=16)
    assert_fails(check_calls("parallel", PLAY, PLAY_GOLD, [swift, wrong]), "no_match")
    # One call cannot serve two gold entries.
    assert_fails(check_calls("parallel", PLAY, PLAY_GOLD, [swift, swift]), "no_match")


def test_greedy_parallel_pairing_rejects_a_valid_reordering_and_fair_accepts_it() -> None:
    functions = [function("f", {"x": typed("integer")}, ["x"])]
    gold = [{"f": {"x": [1, 2]}}, {"f": {"x": [1]}}]
    # Gold 0 takes the first call that fits it (x=1), leaving x=2 for gold 1, which wants 1.
    verdict = check_calls("parallel", functions, gold, [call("f", x=1), call("f", x=2)])
    assert (verdict.correct, verdict.fair, verdict.failed_check) == (False, True, "no_match")
    assert_passes(check_calls("parallel", functions, gold, [call("f", x=2), call("f", x=1)]))


def test_fair_stays_false_when_no_pairing_in_any_order_exists() -> None:
    functions = [function("f", {"x": typed("integer")}, ["x"])]
    gold = [{"f": {"x": [1, 2]}}, {"f": {"x": [1]}}]
    assert_fails(
        check_calls("parallel", functions, gold, [call("f", x=2), call("f", x=2)]), "no_match"
    )


def test_parallel_multiple_pairs_calls_to_different_functions() -> None:
    functions = [
        function("a.sum", {"n": typed("integer")}, ["n"]),
        function("b.product", {"n": typed("integer")}, ["n"]),
    ]
    gold = [{"a.sum": {"n": [3]}}, {"b.product": {"n": [5]}}]
    calls = [call("b.product", n=5), call("a.sum", n=3)]
    assert_passes(check_calls("parallel_multiple", functions, gold, calls))
    swapped_values = [call("b.product", n=3), call("a.sum", n=5)]
    assert_fails(check_calls("parallel_multiple", functions, gold, swapped_values), "no_match")


def test_irrelevance_is_correct_only_without_a_call() -> None:
    functions = [function("f", {"a": typed("integer")}, ["a"])]
    assert_passes(check_calls("irrelevance", functions, None, None))
    assert_passes(check_calls("irrelevance", functions, None, []))
    assert_fails(
        check_calls("irrelevance", functions, None, [call("f", a=1)]), "called_when_irrelevant"
    )


def test_irrelevance_counts_output_not_in_call_format_as_no_call() -> None:
    functions = [function("f", {"a": typed("integer")}, ["a"])]
    not_calls = [call("f", a=1), {"name": "f"}]
    assert_passes(check_calls("irrelevance", functions, None, not_calls))


def test_live_relevance_needs_some_call() -> None:
    functions = [function("f", {"a": typed("integer")}, ["a"])]
    assert_passes(check_calls("live_relevance", functions, None, [call("f", a=999)]))
    assert_fails(check_calls("live_relevance", functions, None, []), "no_call")
    assert_fails(check_calls("live_relevance", functions, None, None), "no_call")
    assert_fails(check_calls("live_relevance", functions, None, [{"name": "f"}]), "no_call")


def test_unsupported_category_is_rejected() -> None:
    with pytest.raises(ValueError, match="simple_java"):
        check_calls("simple_java", [], [], [])


def test_unknown_parameter_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="number"):
        check_one({"type": "number"}, [1], 1)


# ---------------------------------------------------------------- parse_calls


def test_parse_calls_reads_one_object_with_prose_around() -> None:
    text = 'Sure: {"name": "math.factorial", "arguments": {"number": 5}} done.'
    assert parse_calls(text) == [{"name": "math.factorial", "arguments": {"number": 5}}]


def test_parse_calls_reads_a_list_of_objects_and_drops_other_keys() -> None:
    text = '[{"name": "f", "arguments": {}, "id": 1}, {"name": "g", "arguments": {"a": [1]}}]'
    assert parse_calls(text) == [
        {"name": "f", "arguments": {}},
        {"name": "g", "arguments": {"a": [1]}},
    ]
    assert parse_calls("[]") == []


def test_parse_calls_gives_none_for_invalid_json_or_non_calls() -> None:
    assert parse_calls("I cannot help with that.") is None
    assert parse_calls('{"name": "f", "arguments": {"a": 1}') is None
    assert parse_calls('{"name": "f", "parameters": {"a": 1}}') is None
    assert parse_calls('{"name": 3, "arguments": {}}') is None
    assert parse_calls('[{"name": "f", "arguments": {}}, 3]') is None
    assert parse_calls('{"name": "f", "arguments": "{\\"a\\": 1}"}') is None


def test_parse_calls_span_starts_at_the_first_bracket_of_either_kind() -> None:
    # "[1]" comes first, so the span runs to the last "]" and is not valid JSON.
    assert parse_calls('See [1]. {"name": "f", "arguments": {}}') is None
    assert parse_calls('{"name": "f", "arguments": {"xs": [1, 2]}}') == [
        {"name": "f", "arguments": {"xs": [1, 2]}}
    ]


# ---------------------------------------------------------------- real BFCL rows


def _rows(path: Path) -> dict[str, dict]:
    with path.open(encoding="utf-8") as handle:
        return {row["id"]: row for row in map(json.loads, filter(str.strip, handle))}


def real_question(category: str, row_id: str) -> tuple[list[dict], list[dict] | None]:
    """The function docs and the gold (None where the category has none) of one BFCL row."""
    functions = _rows(BFCL_DIR / f"BFCL_v4_{category}.json")[row_id]["function"]
    gold_path = BFCL_DIR / "possible_answer" / f"BFCL_v4_{category}.json"
    gold = _rows(gold_path)[row_id]["ground_truth"] if gold_path.exists() else None
    return functions, gold


@requires_bfcl_data
def test_real_simple_python_row() -> None:
    functions, gold = real_question("simple_python", "simple_python_0")
    good = [call("calculate_triangle_area", base=10, height=5)]
    assert_passes(check_calls("simple_python", functions, gold, good))
    with_unit = [call("calculate_triangle_area", base=10, height=5, unit="Units")]
    assert_passes(check_calls("simple_python", functions, gold, with_unit))
    string_base = [call("calculate_triangle_area", base="10", height=5)]
    assert_fails(check_calls("simple_python", functions, gold, string_base), "type_mismatch")


@requires_bfcl_data
def test_real_simple_python_row_with_a_dotted_name() -> None:
    functions, gold = real_question("simple_python", "simple_python_1")
    assert_passes(check_calls("simple_python", functions, gold, [call("math.factorial", number=5)]))
    underscored = [call("math_factorial", number=5)]
    assert_fails(check_calls("simple_python", functions, gold, underscored), "wrong_func_name")


@requires_bfcl_data
def test_real_simple_python_row_rejects_ints_in_a_float_array() -> None:
    functions, gold = real_question("simple_python", "simple_python_82")
    floats = [call("calculate_average", numbers=[12.0, 15.0, 18.0, 20.0, 21.0, 26.0, 30.0])]
    ints = [call("calculate_average", numbers=[12, 15, 18, 20, 21, 26, 30])]
    assert_passes(check_calls("simple_python", functions, gold, floats))
    assert_fails(check_calls("simple_python", functions, gold, ints), "type_mismatch")


@requires_bfcl_data
def test_real_multiple_row() -> None:
    functions, gold = real_question("multiple", "multiple_0")
    good = [call("triangle_properties.get", side1=5, side2=4, side3=3, get_area=True)]
    assert_passes(check_calls("multiple", functions, gold, good))
    other_function = [call("circle_properties.get", radius=5.0)]
    assert_fails(check_calls("multiple", functions, gold, other_function), "wrong_func_name")


@requires_bfcl_data
def test_real_parallel_row() -> None:
    functions, gold = real_question("parallel", "parallel_0")
    maroon = call("spotify.play", artist="Maroon 5", duration=15)
    swift = call("spotify.play", artist="Taylor Swift", duration=20)
    assert_passes(check_calls("parallel", functions, gold, [maroon, swift]))
    assert_fails(check_calls("parallel", functions, gold, [maroon]), "wrong_count")
    late = call("spotify.play", artist="Taylor Swift", duration=25)
    assert_fails(check_calls("parallel", functions, gold, [maroon, late]), "no_match")


@requires_bfcl_data
def test_real_parallel_row_where_greedy_pairing_rejects_a_right_answer() -> None:
    # parallel_178's first gold entry accepts Microsoft or Apple on 2022-01-01, so an Apple
    # January call emitted first is taken by it and the Apple January gold entry goes unmatched.
    functions, gold = real_question("parallel", "parallel_178")
    microsoft_jan = call("get_stock_price", company_name="Microsoft", date="2022-01-01")
    microsoft_feb = call("get_stock_price", company_name="Microsoft", date="2022-02-01")
    apple_jan = call("get_stock_price", company_name="Apple", date="2022-01-01")
    apple_feb = call("get_stock_price", company_name="Apple", date="2022-02-01")
    bfcl_order = [microsoft_jan, microsoft_feb, apple_jan, apple_feb]
    assert_passes(check_calls("parallel", functions, gold, bfcl_order))
    apple_first = [apple_jan, apple_feb, microsoft_jan, microsoft_feb]
    verdict = check_calls("parallel", functions, gold, apple_first)
    assert (verdict.correct, verdict.fair, verdict.failed_check) == (False, True, "no_match")


@requires_bfcl_data
def test_real_parallel_multiple_row() -> None:
    functions, gold = real_question("parallel_multiple", "parallel_multiple_0")
    product = call("math_toolkit.product_of_primes", count=5)
    total = call("math_toolkit.sum_of_multiples", lower_limit=1, upper_limit=1000, multiples=[3, 5])
    assert_passes(check_calls("parallel_multiple", functions, gold, [product, total]))
    reversed_multiples = call(
        "math_toolkit.sum_of_multiples", lower_limit=1, upper_limit=1000, multiples=[5, 3]
    )
    assert_fails(
        check_calls("parallel_multiple", functions, gold, [product, reversed_multiples]),
        "no_match",
    )


@requires_bfcl_data
def test_real_irrelevance_row() -> None:
    functions, gold = real_question("irrelevance", "irrelevance_0")
    assert gold is None
    assert_passes(check_calls("irrelevance", functions, gold, None))
    bmi = [call("determine_body_mass_index", weight=10.0, height=5.0)]
    assert_fails(check_calls("irrelevance", functions, gold, bmi), "called_when_irrelevant")


@requires_bfcl_data
def test_real_live_simple_row() -> None:
    functions, gold = real_question("live_simple", "live_simple_0-0-0")
    good = [call("get_user_info", user_id=7890, special="Black")]
    assert_passes(check_calls("live_simple", functions, gold, good))
    no_user = [call("get_user_info", special="black")]
    assert_fails(check_calls("live_simple", functions, gold, no_user), "missing_required")
    # "special" has no "" in the gold although the schema makes it optional.
    no_special = [call("get_user_info", user_id=7890)]
    assert_fails(check_calls("live_simple", functions, gold, no_special), "missing_optional")


@requires_bfcl_data
def test_real_live_simple_row_with_a_list_of_dicts() -> None:
    functions, gold = real_question("live_simple", "live_simple_189-114-0")
    people = [{"name": "Chester", "age": 42}, {"age": 43, "name": "jane"}]
    name = "extractor.extract_information"
    assert_passes(check_calls("live_simple", functions, gold, [call(name, data=people)]))
    nicknamed = [{**people[0], "nick_name": "Chet"}, people[1]]
    assert_fails(
        check_calls("live_simple", functions, gold, [call(name, data=nicknamed)]), "value_mismatch"
    )


@requires_bfcl_data
def test_real_live_simple_row_with_an_empty_acceptable_list_can_never_pass() -> None:
    # live_simple_106-63-0 requires "auto_loan_payment_start" but its gold accepts no value.
    functions, gold = real_question("live_simple", "live_simple_106-63-0")
    assert gold is not None
    (arguments,) = gold[0].values()
    assert arguments["auto_loan_payment_start"] == []
    answerable = {name: acceptable[0] for name, acceptable in arguments.items() if acceptable}
    omitted = [call("record", **answerable)]
    assert_fails(check_calls("live_simple", functions, gold, omitted), "missing_required")
    # An empty list is the only candidate left, and the element check finds no acceptable list.
    every = {name: acceptable[0] if acceptable else [] for name, acceptable in arguments.items()}
    assert_fails(
        check_calls("live_simple", functions, gold, [call("record", **every)]), "type_mismatch"
    )


@requires_bfcl_data
def test_real_live_parallel_row() -> None:
    functions, gold = real_question("live_parallel", "live_parallel_0-0-0")
    beijing = call("get_current_weather", location="Beijing, China")
    shanghai = call("get_current_weather", location="Shanghai, China", unit="fahrenheit")
    assert_passes(check_calls("live_parallel", functions, gold, [shanghai, beijing]))
    extra = call("get_current_weather", location="Beijing, China", days=3)
    assert_fails(check_calls("live_parallel", functions, gold, [shanghai, extra]), "no_match")
