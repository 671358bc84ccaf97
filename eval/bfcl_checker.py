"""The Berkeley Function Calling Leaderboard (BFCL v4) AST checker for Python calls, re-implemented.

Contract
--------
`check_calls(category, functions, ground_truth, calls)` returns a `BfclVerdict` whose `correct`
is the verdict BFCL's own checker gives the same calls, so our accuracies are comparable with the
leaderboard's. `calls` is what the model emitted, already parsed: a list of
`{"name": str, "arguments": dict}` (`parse_calls` makes it from a reply), or None when nothing
parseable was emitted. `functions` are the question's BFCL function docs and `ground_truth` its
`possible_answer` list: one `{function_name: {param: [acceptable values...]}}` per expected call
(None for the irrelevance categories). `failed_check` names the first rule that failed, `detail`
says why in a few words. Categories: simple_python, live_simple, multiple, live_multiple,
parallel, parallel_multiple, live_parallel, live_parallel_multiple, irrelevance,
live_irrelevance and live_relevance; any other (Java, JavaScript, multi-turn...) is a ValueError.
Inputs are trusted: each function doc must pass `function_doc_problem` and the ground truth be
in BFCL's form (`eval.bfcl.case_problem` checks both, for the suite's files and for records).

The rules were learned from BFCL's evaluator (ShishirPatil/gorilla,
berkeley-function-call-leaderboard/bfcl_eval/eval_checker/ast_eval/ast_checker.py, with
eval_checker/eval_runner.py and bfcl_eval/utils.py for the runners and output-format checks).
No BFCL code is used; this is our own statement of its rules.

Routing (`ast_checker`, `relevance_file_runner`)
  * irrelevance: correct iff no call was emitted: None, an empty list, or output that is not in
    call format (BFCL counts a failed decode and any non-call output as "no call").
  * live_relevance: the opposite, correct iff at least one well-formed call was emitted.
  * a category with "parallel" in its name is checked without order (below), one with "multiple"
    as a single call against the gold's function, anything else as a simple call.
  * None -> `no_call` (BFCL: the decoder failed); a list holding something that is not a call ->
    `malformed_call` (BFCL: wrong output format).

Counting
  * simple: exactly one call (`wrong_count` otherwise, an empty list included), checked against
    the question's first function doc.
  * multiple: as many calls as gold entries (always one), and that call is checked against the
    function the gold names; picking another function is `wrong_func_name`.
  * parallel: as many calls as gold entries (`wrong_count`), then greedy pairing: gold entries are
    taken in order, and each takes the first model call, in emitted order, that is not taken yet
    and passes the one-call check against it. A gold entry left without a call is `no_match`.

One call against one gold entry (`simple_function_checker`), the first failure wins:
  1. `wrong_func_name`: the name must equal the function doc's name exactly. Dots stay dots,
     except for models BFCL configures with underscore_to_dot (function-calling APIs that forbid
     dots), where the expected name has every "." replaced by "_" (`underscore_to_dot=True`).
  2. `missing_required`: every parameter in the schema's "required" list must be given.
  3. then each given argument, in the order the model gave them:
     `unexpected_param` if it is not in the schema's properties OR not in the gold entry;
     `type_mismatch` if its type fails the type rule below; `value_mismatch` if its value is not
     among the acceptable ones under the value rules below.
  4. `missing_optional`: a parameter the gold lists may be left out only when "" is among its
     acceptable values (BFCL's marker of an optional parameter).

Types (`type_checker`, `PYTHON_TYPE_MAPPING`)
  * BFCL types map to Python types: string and any -> str, integer -> int, float -> float,
    boolean -> bool, array and tuple -> list, dict -> dict; the match is on the exact type, so a
    bool is not an integer and a float is not an integer.
  * An int given for a float parameter is turned into a float first, at the top level only.
  * "Variables": if the gold's first non-"" acceptable value has another Python type than the
    schema's (gold strings for an array, null for a string...), a value of the gold's type also
    passes the type check, and whatever the value's type it is then compared by plain equality,
    skipping the value rules below (no standardisation).
  * array and tuple check their elements one level deep against the items type (same exact-type
    and variable rules, with the gold list as reference and no int-to-float step, so `[1, 2]` for
    an array of float fails). The element check passes if it holds for any acceptable value that
    is a list, and always passes when an acceptable value is not a list (e.g. "").

Values
  * string (and any): compared after standardisation on both sides: the characters
    space , . / - _ * ^ are removed, the rest is lower-cased and ' becomes ". Other punctuation,
    tabs and newlines are kept.
  * array/tuple: element by element, in order, with top-level string elements standardised;
    an acceptable "" counts as the empty list, so an optional array also accepts [].
  * dict: for some acceptable dict (skipping ""), every given key must be one of its keys, every
    given value must be among that key's acceptable values (strings standardised, anything else
    by equality, so nested lists and dicts are compared exactly and an int equals a float), and
    every key left out must allow "".
  * array of dict: for some acceptable list of the same length, the dicts are checked pairwise in
    order with the dict rule.
  * anything else (integer, float, boolean, variables): plain equality with an acceptable value,
    Python's: 1 == 1.0 == True.
  Where BFCL would crash on malformed gold or output (a list element that is not a dict in an
  array of dict, an acceptable value with no length), we report a mismatch instead; an array
  schema without an items type skips the element check; an unknown BFCL type is a ValueError.

Failed-check names: no_call, malformed_call, wrong_count, called_when_irrelevant,
wrong_func_name, missing_required, unexpected_param, type_mismatch, value_mismatch,
missing_optional, no_match (parallel: some gold entry found no untaken call; the detail lists why
each candidate failed).

Known consequences on the v4 data: live_simple_106-63-0 and live_simple_112-68-0 require
parameters whose acceptable list is empty, so no answer passes them; parallel_178 is one row
where a right answer in another order fails BFCL's greedy pairing (see "fair").

The "fair" verdict
  BFCL's greedy parallel pairing can reject calls that are right: with gold entries
  f(x in {1, 2}) then f(x in {1}), the calls [f(x=1), f(x=2)] fail because the first gold entry
  takes f(x=1), which the second needed. `fair` is True when a one-to-one pairing in any order
  exists (a perfect maximum bipartite matching between model calls and gold entries under the
  same one-call check); `correct` stays BFCL's. In every other case `fair == correct`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from data.call_format import has_markup, parse_markup

# BFCL parameter types and the Python type a value of each must have.
BFCL_PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
# Types whose elements are type-checked against the schema's "items" type.
ELEMENT_CHECKED_TYPES = frozenset({"array", "tuple"})
# Among a parameter's acceptable values, "" means the parameter may be left out.
OPTIONAL_MARKER = ""
# Longest `detail` a verdict carries (gold lists can be long).
DETAIL_LIMIT = 400
# Characters string standardisation removes before comparing.
IGNORED_STRING_CHARACTERS = re.compile(r"[ ,./\-_*^]")

SIMPLE_CATEGORIES = frozenset({"simple_python", "live_simple"})
MULTIPLE_CATEGORIES = frozenset({"multiple", "live_multiple"})
PARALLEL_CATEGORIES = frozenset(
    {"parallel", "parallel_multiple", "live_parallel", "live_parallel_multiple"}
)
IRRELEVANCE_CATEGORIES = frozenset({"irrelevance", "live_irrelevance"})
RELEVANCE_CATEGORIES = frozenset({"live_relevance"})
SUPPORTED_CATEGORIES = (
    SIMPLE_CATEGORIES
    | MULTIPLE_CATEGORIES
    | PARALLEL_CATEGORIES
    | IRRELEVANCE_CATEGORIES
    | RELEVANCE_CATEGORIES
)


@dataclass(frozen=True)
class BfclVerdict:
    correct: bool  # BFCL's own verdict
    fair: bool  # equals `correct` except where BFCL's greedy parallel pairing rejects a valid set
    failed_check: str | None  # the first failed rule's name, None if correct
    detail: str  # a short human-readable explanation ("" if correct)


@dataclass(frozen=True)
class _Failure:
    check: str
    detail: str


_PASSED = BfclVerdict(correct=True, fair=True, failed_check=None, detail="")


def _failed(check: str, detail: str, *, fair: bool = False) -> BfclVerdict:
    if len(detail) > DETAIL_LIMIT:
        detail = detail[: DETAIL_LIMIT - 3] + "..."
    return BfclVerdict(correct=False, fair=fair, failed_check=check, detail=detail)


def standardize_string(text: str) -> str:
    """BFCL's string standardisation: drop space , . / - _ * ^, lower-case, ' -> "."""
    return IGNORED_STRING_CHARACTERS.sub("", text).lower().replace("'", '"')


def _standardised_if_string(value: Any) -> Any:
    return standardize_string(value) if type(value) is str else value


def _elements(acceptable: Any) -> list[Any] | None:
    """The elements BFCL would index out of an acceptable value (a string gives its characters,
    so "" gives none, and so does an empty dict); None where BFCL would crash."""
    if isinstance(acceptable, (list, str)):
        return list(acceptable)
    if isinstance(acceptable, Mapping) and not acceptable:
        return []
    return None


def _allows_omission(acceptable: Any) -> bool:
    """Whether "" is among the acceptable values (Python's `in`, as BFCL uses it)."""
    return isinstance(acceptable, (list, str)) and OPTIONAL_MARKER in acceptable


def _is_bfcl_type(value: Any) -> bool:
    return isinstance(value, str) and value in BFCL_PYTHON_TYPES


def function_doc_problem(function: Any) -> str | None:
    """What a BFCL function doc lacks for `check_calls`, or None: a string `name` and a
    `parameters` object whose `required`, if given, is a list of names and whose `properties`,
    if given, maps each parameter to an object with a BFCL `type` (an array's or tuple's
    `items`, if given, an object whose `type`, if given, is a BFCL type too)."""
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        return "must be an object with a string 'name'"
    schema = function.get("parameters")
    if not isinstance(schema, Mapping):
        return f"{function['name']!r}: 'parameters' must be an object"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        return f"{function['name']!r}: 'required' must be a list of parameter names"
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        return f"{function['name']!r}: 'properties' must be an object"
    for name, parameter in properties.items():
        where = f"{function['name']!r}: parameter {name!r}"
        if not isinstance(parameter, Mapping):
            return f"{where} must be an object"
        if not _is_bfcl_type(parameter.get("type")):
            types = ", ".join(BFCL_PYTHON_TYPES)
            return f"{where}: 'type' must be one of {types}, got {parameter.get('type')!r}"
        items = parameter.get("items", {})
        if parameter["type"] in ELEMENT_CHECKED_TYPES and not (
            isinstance(items, Mapping) and _is_bfcl_type(items.get("type", "any"))
        ):
            return f"{where}: 'items' must be an object whose 'type', if any, is a BFCL type"
    return None


def _python_type(bfcl_type: str) -> type:
    try:
        return BFCL_PYTHON_TYPES[bfcl_type]
    except KeyError:
        raise ValueError(f"unsupported BFCL parameter type {bfcl_type!r}") from None


def _gold_value_type(acceptable: Sequence[Any]) -> type | None:
    """The type of the first acceptable value that is not the optional marker."""
    for value in acceptable:
        if value != OPTIONAL_MARKER:
            return type(value)
    return None


def _type_check(
    value: Any, acceptable: Sequence[Any], python_type: type, element_type: type | None
) -> tuple[bool, bool]:
    """(passes, compare_as_variable) under BFCL's type rule; see the module docstring."""
    gold_type = _gold_value_type(acceptable)
    as_variable = gold_type is not None and gold_type is not python_type
    if type(value) is python_type:
        if element_type is None:
            return True, as_variable
        for option in acceptable:
            if type(option) is not list or all(
                _type_check(element, option, element_type, None)[0] for element in value
            ):
                return True, as_variable
        return False, False  # the elements failed; a gold-typed value cannot rescue this
    if gold_type is not None and type(value) is gold_type:
        return True, True
    return False, False


def _string_matches(value: str, acceptable: Sequence[Any]) -> bool:
    standard = standardize_string(value)
    return any(
        type(option) is str and standardize_string(option) == standard for option in acceptable
    )


def _list_matches(value: list[Any], acceptable: Sequence[Any]) -> bool:
    standard = [_standardised_if_string(element) for element in value]
    for option in acceptable:
        elements = _elements(option)
        if elements is not None and [_standardised_if_string(e) for e in elements] == standard:
            return True
    return False


def _dict_mismatch_against(value: Any, option: Any) -> str | None:
    """Why `value` does not match one acceptable dict, None if it does."""
    if type(value) is not dict:
        return f"{value!r} is not a dict"
    if not isinstance(option, Mapping):
        return f"acceptable value {option!r} is not a dict"
    for key, given in value.items():
        if key not in option:
            return f"unexpected dict key {key!r}"
        accepted = [_standardised_if_string(a) for a in _elements(option[key]) or []]
        if _standardised_if_string(given) not in accepted:
            return f"dict key {key!r}: {given!r} is not one of {option[key]!r}"
    for key, accepted_values in option.items():
        if key not in value and not _allows_omission(accepted_values):
            return f"dict key {key!r} is missing"
    return None


def _dict_mismatch(value: Any, acceptable: Sequence[Any]) -> str | None:
    """Why `value` matches none of the acceptable dicts ("" skipped), None if one matches."""
    reason = "no acceptable dict"
    for option in acceptable:
        if option == OPTIONAL_MARKER:
            continue
        reason = _dict_mismatch_against(value, option)
        if reason is None:
            return None
    return reason


def _list_of_dicts_mismatch(value: list[Any], acceptable: Sequence[Any]) -> str | None:
    """Why `value` matches none of the acceptable lists of dicts, None if one matches."""
    reason = "no acceptable list of dicts"
    for option in acceptable:
        elements = _elements(option)
        if elements is None or len(elements) != len(value):
            reason = f"{len(value)} dicts where an acceptable list has another count"
            continue
        mismatches = (
            _dict_mismatch(given, [gold]) for given, gold in zip(value, elements, strict=True)
        )
        reason = next((m for m in mismatches if m is not None), None)
        if reason is None:
            return None
    return reason


def _argument_failure(
    name: str, value: Any, schema: Mapping[str, Any], acceptable: Sequence[Any]
) -> _Failure | None:
    bfcl_type = schema["type"]
    python_type = _python_type(bfcl_type)
    element_type = None
    if bfcl_type in ELEMENT_CHECKED_TYPES and "type" in schema.get("items", {}):
        element_type = _python_type(schema["items"]["type"])
    if bfcl_type == "float" and type(value) is int:
        value = float(value)

    passes, as_variable = _type_check(value, acceptable, python_type, element_type)
    if not passes:
        return _Failure("type_mismatch", f"{name!r}: {value!r} is not of BFCL type {bfcl_type!r}")
    if not as_variable:
        reason: str | None = None
        if python_type is dict:
            reason = _dict_mismatch(value, acceptable)
        elif python_type is list and element_type is dict:
            reason = _list_of_dicts_mismatch(value, acceptable)
        elif python_type is str:
            reason = None if _string_matches(value, acceptable) else "string differs"
        elif python_type is list:
            reason = None if _list_matches(value, acceptable) else "list differs"
        else:
            reason = None if value in acceptable else "value differs"
        if reason is None:
            return None
        return _Failure("value_mismatch", f"{name!r}: {value!r} not in {acceptable!r} ({reason})")
    if value not in acceptable:
        return _Failure("value_mismatch", f"{name!r}: {value!r} not in {acceptable!r}")
    return None


def _expected_name(function_name: str, underscore_to_dot: bool) -> str:
    return function_name.replace(".", "_") if underscore_to_dot else function_name


def _call_failure(
    function: Mapping[str, Any],
    call: Mapping[str, Any],
    gold_entry: Mapping[str, Any],
    *,
    underscore_to_dot: bool,
) -> _Failure | None:
    """BFCL's check of one call against one gold entry; None when it passes."""
    (gold_params,) = gold_entry.values()
    expected_name = _expected_name(function["name"], underscore_to_dot)
    if call["name"] != expected_name:
        return _Failure("wrong_func_name", f"called {call['name']!r}, expected {expected_name!r}")

    arguments = call["arguments"]
    schema = function["parameters"]
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in arguments:
            return _Failure("missing_required", f"required parameter {name!r} is missing")
    for name, value in arguments.items():
        if name not in properties or name not in gold_params:
            return _Failure("unexpected_param", f"parameter {name!r} is not expected")
        failure = _argument_failure(name, value, properties[name], gold_params[name])
        if failure is not None:
            return failure
    for name, acceptable in gold_params.items():
        if name not in arguments and not _allows_omission(acceptable):
            return _Failure("missing_optional", f"parameter {name!r} is expected by the gold")
    return None


def _is_call(item: Any) -> bool:
    return (
        isinstance(item, Mapping)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("arguments"), Mapping)
    )


def _function_named(functions: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    for function in functions:
        if function["name"] == name:
            return function
    raise ValueError(f"the gold names function {name!r}, which the question does not offer")


def _gold_name(gold_entry: Mapping[str, Any]) -> str:
    (name,) = gold_entry.keys()
    return name


def _has_perfect_matching(accepts: list[list[bool]]) -> bool:
    """Whether every gold entry (row) can be paired with its own call (column); Kuhn's
    augmenting paths, enough for the handful of calls a BFCL question has."""
    gold_of_call: dict[int, int] = {}

    def place(gold: int, visited: set[int]) -> bool:
        for call, accepted in enumerate(accepts[gold]):
            if accepted and call not in visited:
                visited.add(call)
                if call not in gold_of_call or place(gold_of_call[call], visited):
                    gold_of_call[call] = gold
                    return True
        return False

    return all(place(gold, set()) for gold in range(len(accepts)))


def _check_parallel(
    functions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    calls: Sequence[Mapping[str, Any]],
    underscore_to_dot: bool,
) -> BfclVerdict:
    if len(calls) != len(ground_truth):
        return _failed("wrong_count", f"{len(calls)} calls, expected {len(ground_truth)}")
    failures = [
        [
            _call_failure(
                _function_named(functions, _gold_name(gold)),
                call,
                gold,
                underscore_to_dot=underscore_to_dot,
            )
            for call in calls
        ]
        for gold in ground_truth
    ]
    taken: set[int] = set()
    for gold_index, row in enumerate(failures):
        untaken = [i for i in range(len(calls)) if i not in taken]
        match = next((i for i in untaken if row[i] is None), None)
        if match is None:
            fair = _has_perfect_matching([[f is None for f in r] for r in failures])
            tried = "; ".join(
                f"call {i}: {failure.check} ({failure.detail})"
                for i in untaken
                if (failure := row[i]) is not None
            )
            note = " A one-to-one pairing in another order exists." if fair else ""
            return _failed(
                "no_match",
                f"no untaken call matches gold call {gold_index} "
                f"{_gold_name(ground_truth[gold_index])!r}: {tried}.{note}",
                fair=fair,
            )
        taken.add(match)
    return _PASSED


def check_calls(
    category: str,
    functions: list[dict],
    ground_truth: list[dict] | None,
    calls: list[dict] | None,
    *,
    underscore_to_dot: bool = False,
) -> BfclVerdict:
    """BFCL's verdict on `calls` for one question; see the module docstring for the rules.

    `underscore_to_dot` reproduces BFCL's name handling for models it configures that way (the
    expected name's dots become underscores); our prompt-format models keep it False.
    """
    if category not in SUPPORTED_CATEGORIES:
        raise ValueError(f"unsupported BFCL category {category!r}")
    well_formed_calls = (
        calls if calls is not None and all(_is_call(call) for call in calls) else None
    )

    if category in IRRELEVANCE_CATEGORIES or category in RELEVANCE_CATEGORIES:
        if category in IRRELEVANCE_CATEGORIES and well_formed_calls:
            names = ", ".join(repr(call["name"]) for call in well_formed_calls)
            return _failed("called_when_irrelevant", f"called {names} when no call was due")
        if category in RELEVANCE_CATEGORIES and not well_formed_calls:
            return _failed("no_call", "no call was emitted when one was due")
        return _PASSED

    if ground_truth is None:
        raise ValueError(f"category {category!r} needs a ground truth")
    if calls is None:
        return _failed("no_call", "nothing parseable was emitted")
    if well_formed_calls is None:
        return _failed("malformed_call", "an emitted item is not a {name, arguments} call")

    if category in PARALLEL_CATEGORIES:
        return _check_parallel(functions, ground_truth, calls, underscore_to_dot)
    if category in MULTIPLE_CATEGORIES:
        if len(calls) != len(ground_truth):
            return _failed("wrong_count", f"{len(calls)} calls, expected {len(ground_truth)}")
        function = _function_named(functions, _gold_name(ground_truth[0]))
    else:
        if len(calls) != 1:
            return _failed("wrong_count", f"{len(calls)} calls, expected 1")
        function = functions[0]
    failure = _call_failure(
        function, calls[0], ground_truth[0], underscore_to_dot=underscore_to_dot
    )
    return _PASSED if failure is None else _failed(failure.check, failure.detail)


def parse_calls(text: str) -> list[dict] | None:
    """The calls in a model reply, or None when there are none in a call format.

    The json format: the span runs from the first "{" or "[" (whichever comes first) to the last
    "}" (for "{") or "]" (for "["), as in the study's extraction, and must be valid JSON. PLaMo's
    tool-request markup is read by `data.call_format.parse_markup`. Either way the result must be
    one object, or a list of objects (an empty JSON list gives []), each with a string "name" and
    an object "arguments"; other keys are dropped. Anything else gives None.
    """
    parsed = parse_markup(text) if has_markup(text) else _json_span(text)
    items = [parsed] if isinstance(parsed, dict) else parsed
    if not isinstance(items, list) or not all(_is_call(item) for item in items):
        return None
    return [{"name": item["name"], "arguments": item["arguments"]} for item in items]


def _json_span(text: str) -> Any:
    """The JSON value of the study's span (see `parse_calls`), or None."""
    starts = [index for index in (text.find("{"), text.find("[")) if index >= 0]
    if not starts:
        return None
    start = min(starts)
    end = text.rfind("}" if text[start] == "{" else "]")
    if end < start:
        return None
    try:
        return json.loads(text[start : end + 1])
    except (ValueError, RecursionError):  # RecursionError: pathologically nested output
        return None
