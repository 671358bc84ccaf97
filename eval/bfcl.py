"""The BFCL v4 suite: the Berkeley Function Calling Leaderboard's single-turn questions turned
into eval rows of the study's format, so `run_eval` can ask them exactly as it asks the frozen
eval.

Contract:
- `load_cases` reads the bundled copies in `data/bfcl/` (see its PROVENANCE.md): for each of
  `CATEGORIES`, `BFCL_v4_<category>.json` (JSON lines `{"id", "question", "function"}`) and,
  except for irrelevance, `possible_answer/BFCL_v4_<category>.json` (JSON lines `{"id",
  "ground_truth"}`). Every error is an `InputError` naming the file, line or case id.
- `case_row` renders one case as an eval row: the system prompt is the training data's
  (`data.prompt.build_system_prompt(render_tools(case.tools))`), the user message is BFCL's, and
  the gold is one acceptable answer in the study's call format (`data.prompt.call_text`); for
  the parallel categories a JSON list of such calls; for irrelevance "" with kind "nocall".
  BFCL's raw function docs and ground truth ride along for a BFCL-style checker.
- `case_problem` says what makes a case unusable by that checker (unusable function docs, a
  ground truth not in BFCL's form); `load_cases` refuses such a case, and `eval.records`
  refuses such a records row.
- `seen_in_training` measures how new the suite is to a training set: BFCL function names found
  among the training rows' tool names, BFCL questions found among the training questions.

The type mapping (`to_json_schema`). BFCL writes parameter types in Python's words; its own
handlers for OpenAI-style function calling rewrite them to JSON Schema before sending the tools
(ShishirPatil/gorilla, berkeley-function-call-leaderboard: the `GORILLA_TO_OPENAPI` table in
bfcl_eval/constants/type_mappings.py, applied by `convert_to_tool` / `_cast_to_openai_type` in
bfcl_eval/model_handler/utils.py). The Python-side part of that table, rewritten here:

    dict, object -> object      float, number -> number     integer -> integer
    tuple, list, array -> array bool, boolean -> boolean    string -> string
    any -> string               a type BFCL's table lacks -> string

Like BFCL, a property with no type becomes a string, a float also gets `"format": "float"`,
and the top level of a function's parameters is always an object. Unlike BFCL's handlers, the
mapping recurses through every `properties`, `items` and `additionalProperties` (theirs stop
at a fixed depth), keeps descriptions word for word (their float note, " This is a float type
value.", and the "Python 3 syntax" hint are not added), and keeps dotted function names
(OpenAI's API forbids dots, a text prompt does not; the ground truth uses the dotted names).

A question's own system message (12 live cases) is appended to the training system prompt
after a blank line, the order BFCL's prompting handlers use, so each row keeps the three
messages the training rows have.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.call_format import call_text, calls_text
from data.leakage import normalise_query, row_query
from data.prompt import build_system_prompt, render_tools
from eval.bfcl_checker import function_doc_problem
from mlx_plamo3.errors import InputError
from mlx_plamo3.io import read_jsonl

CATEGORIES: tuple[str, ...] = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_parallel",
)
# Categories whose answer is several calls at once: their gold is a JSON list of calls.
PARALLEL_CATEGORIES: tuple[str, ...] = ("parallel", "parallel_multiple", "live_parallel")
# Categories with no possible-answer file: no function should be called.
NOCALL_CATEGORIES: tuple[str, ...] = ("irrelevance",)
BFCL_DIR = Path(__file__).resolve().parents[1] / "data" / "bfcl"
ANSWER_DIR = "possible_answer"
SUITE = "bfcl"
SHOWN_OVERLAP = 10

# BFCL's Python-side type names and their JSON Schema types (see the module docstring).
JSON_SCHEMA_TYPES: dict[str, str] = {
    "dict": "object",
    "object": "object",
    "float": "number",
    "number": "number",
    "integer": "integer",
    "tuple": "array",
    "list": "array",
    "array": "array",
    "bool": "boolean",
    "boolean": "boolean",
    "string": "string",
    "any": "string",
}
FALLBACK_TYPE = "string"
# An acceptable value of "" in BFCL's ground truth means "the parameter may be left out".
OPTIONAL_MARKER = ""


def is_bfcl_row(row: Mapping[str, Any]) -> bool:
    """A records or eval row of this suite (it carries `suite` "bfcl")."""
    return row.get("suite") == SUITE


@dataclass(frozen=True)
class BfclCase:
    """One BFCL question: its turn, the raw function docs, the docs as JSON Schema tools, and
    the acceptable answers (None for irrelevance)."""

    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    ground_truth: list[dict[str, Any]] | None


def question_file(category: str, root: Path = BFCL_DIR) -> Path:
    return Path(root) / f"BFCL_v4_{category}.json"


def answer_file(category: str, root: Path = BFCL_DIR) -> Path:
    return Path(root) / ANSWER_DIR / f"BFCL_v4_{category}.json"


def to_json_schema(bfcl_schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a BFCL schema (a function's parameters or any part of them) with its types, and
    those of everything nested in it, mapped to JSON Schema; other keys are kept as they are."""
    schema = copy.deepcopy(bfcl_schema)
    bfcl_type = schema.get("type")
    known = isinstance(bfcl_type, str) and bfcl_type in JSON_SCHEMA_TYPES
    schema["type"] = JSON_SCHEMA_TYPES[bfcl_type] if known else FALLBACK_TYPE
    if bfcl_type == "float":
        schema.setdefault("format", "float")
    if isinstance(schema.get("properties"), dict):
        schema["properties"] = {
            name: to_json_schema(sub) if isinstance(sub, dict) else sub
            for name, sub in schema["properties"].items()
        }
    items = schema.get("items")
    if isinstance(items, dict):
        schema["items"] = to_json_schema(items)
    elif isinstance(items, list):
        schema["items"] = [to_json_schema(s) if isinstance(s, dict) else s for s in items]
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = to_json_schema(schema["additionalProperties"])
    return schema


def to_tool(function: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function doc as a tool of the training data's shape: name, description and
    parameters, the parameters an object schema."""
    tool = copy.deepcopy(function)
    parameters = to_json_schema(function.get("parameters") or {})
    parameters["type"] = "object"
    parameters.setdefault("properties", {})
    tool["parameters"] = parameters
    return tool


def read_bfcl_file(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise InputError(
            f"{path}: BFCL file missing; the bundled copies live in {BFCL_DIR} "
            "(see PROVENANCE.md there)"
        )
    entries = list(read_jsonl(path))
    for number, entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise InputError(f"{path}:{number}: not a JSON object with a string 'id'")
    return entries


def _first_acceptable(values: Any, where: str) -> tuple[bool, Any]:
    """(present, value): the first acceptable value that is not the optional marker; not
    present when "" is the only one. An empty list of acceptable values (seven array
    parameters of live_simple) is read as the empty array."""
    if not isinstance(values, list):
        raise InputError(f"{where}: acceptable values must be a list, got {values!r}")
    if not values:
        return True, []
    for value in values:
        if isinstance(value, str) and value == OPTIONAL_MARKER:
            continue
        return True, _resolve(value, where)
    return False, None


def _resolve(value: Any, where: str) -> Any:
    """An acceptable value with its nested alternatives chosen: BFCL writes the keys of a
    dict value (also inside lists) as lists of acceptable values, like the top level."""
    if isinstance(value, dict):
        resolved = {}
        for key, values in value.items():
            present, chosen = _first_acceptable(values, f"{where}.{key}")
            if present:
                resolved[key] = chosen
        return resolved
    if isinstance(value, list):
        return [_resolve(item, where) for item in value]
    return value


def answer_calls(ground_truth: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    """One acceptable answer of a ground truth as (name, arguments) calls, in order; an entry
    not in BFCL's form is an InputError naming it (`ground_truth[i]`)."""
    calls = []
    for i, entry in enumerate(ground_truth):
        where = f"ground_truth[{i}]"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise InputError(f"{where}: must be an object with exactly one function name")
        ((name, params),) = entry.items()
        if not isinstance(params, dict):
            raise InputError(f"{where}: the parameters of {name!r} must be an object")
        arguments = {}
        for param, values in params.items():
            present, value = _first_acceptable(values, f"{where}.{name}.{param}")
            if present:
                arguments[param] = value
        calls.append((name, arguments))
    return calls


def case_problem(category: Any, functions: Any, ground_truth: Any) -> str | None:
    """What makes a case (or a records row) unusable by BFCL's checker, or None: the category
    must be one of `CATEGORIES`; the function docs a non-empty list, each passing
    `eval.bfcl_checker.function_doc_problem`; the ground truth None for a no-call category,
    else a non-empty list in BFCL's form (`answer_calls`), one call unless the category is
    parallel, calling only the functions offered."""
    if category not in CATEGORIES:
        return f"the category must be one of {', '.join(CATEGORIES)}, got {category!r}"
    if not isinstance(functions, list) or not functions:
        return "needs a non-empty list of function docs"
    for i, function in enumerate(functions):
        problem = function_doc_problem(function)
        if problem is not None:
            return f"function doc {i}: {problem}"
    if category in NOCALL_CATEGORIES:
        if ground_truth is not None:
            return f"category {category!r} has no ground truth: it must be null"
        return None
    if not isinstance(ground_truth, list) or not ground_truth:
        return "the ground truth must be a non-empty list of expected calls"
    try:
        calls = answer_calls(ground_truth)
    except InputError as exc:
        return str(exc)
    if category not in PARALLEL_CATEGORIES and len(calls) != 1:
        return f"category {category!r} expects one call, ground truth has {len(calls)}"
    offered = {function["name"] for function in functions}
    for name, _ in calls:
        if name not in offered:
            return f"the ground truth calls {name!r}, which no function doc offers"
    return None


def gold_text(case: BfclCase) -> str:
    """The gold text: one call in the study's format, a JSON list of them for a parallel
    category, "" for irrelevance; a case with a `case_problem` is an InputError naming it."""
    problem = case_problem(case.category, case.functions, case.ground_truth)
    if problem is not None:
        raise InputError(f"{case.id}: {problem}")
    if case.ground_truth is None:
        return ""
    calls = answer_calls(case.ground_truth)
    if case.category in PARALLEL_CATEGORIES:
        return calls_text(calls)
    return call_text(*calls[0])


def _check_turn(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The question's only turn: system messages (if any), then one user message."""
    question = entry.get("question")
    if not isinstance(question, list) or len(question) != 1 or not isinstance(question[0], list):
        raise InputError(f"{where}: 'question' must hold exactly one turn (single-turn only)")
    turn = question[0]
    roles = [m.get("role") if isinstance(m, dict) else None for m in turn]
    if roles.count("user") != 1 or roles[-1] != "user" or set(roles) - {"system", "user"}:
        raise InputError(
            f"{where}: the turn must be system messages then one user message, got {roles}"
        )
    if not all(isinstance(m.get("content"), str) for m in turn):
        raise InputError(f"{where}: a message of the turn has no string 'content'")
    return turn


def _load_category(category: str, root: Path, limit: int | None) -> list[BfclCase]:
    path = question_file(category, root)
    entries = read_bfcl_file(path)
    if limit is not None:
        entries = entries[:limit]
    answers: dict[str, Any] | None = None
    answer_path = answer_file(category, root)
    if category not in NOCALL_CATEGORIES:
        answers = {}
        for number, entry in read_bfcl_file(answer_path):
            if not isinstance(entry.get("ground_truth"), list):
                raise InputError(f"{answer_path}:{number}: 'ground_truth' must be a list")
            answers[entry["id"]] = entry["ground_truth"]
    cases, seen = [], set()
    for number, entry in entries:
        where = f"{path}:{number} ({entry['id']})"
        if entry["id"] in seen:
            raise InputError(f"{where}: id {entry['id']!r} occurs twice")
        seen.add(entry["id"])
        if answers is not None and entry["id"] not in answers:
            raise InputError(f"{answer_path}: no possible answer for id {entry['id']!r}")
        messages = _check_turn(entry, where)
        functions = entry.get("function")
        ground_truth = None if answers is None else answers[entry["id"]]
        problem = case_problem(category, functions, ground_truth)
        if problem is not None:
            raise InputError(f"{where}: {problem}")
        cases.append(
            BfclCase(
                id=entry["id"],
                category=category,
                messages=messages,
                functions=functions,
                tools=[to_tool(f) for f in functions],
                ground_truth=ground_truth,
            )
        )
    return cases


def load_cases(
    categories: Sequence[str] | str = CATEGORIES,
    root: Path | str = BFCL_DIR,
    limit_per_category: int | None = None,
) -> list[BfclCase]:
    """The cases of the given categories, category by category in file order; with
    `limit_per_category`, the first that many of each."""
    if isinstance(categories, str):
        categories = (categories,)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise InputError(
            f"unknown BFCL categories {unknown}; valid categories: {', '.join(CATEGORIES)}"
        )
    if limit_per_category is not None and limit_per_category < 0:
        raise InputError(f"limit_per_category must be >= 0, got {limit_per_category}")
    cases: list[BfclCase] = []
    for category in categories:
        cases += _load_category(category, Path(root), limit_per_category)
    return cases


def question_text(case: BfclCase) -> str:
    """The user's message of a case."""
    return next(m["content"] for m in case.messages if m["role"] == "user")


def case_row(case: BfclCase) -> dict[str, Any]:
    """The eval row of a case: the study's three messages, kind, gold and tools, plus the
    suite's fields (suite, category, id, BFCL's raw function docs and ground truth)."""
    system = build_system_prompt(render_tools(case.tools))
    for message in case.messages:
        if message["role"] == "system":
            system += "\n\n" + message["content"]
    gold = gold_text(case)
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question_text(case)},
            {"role": "assistant", "content": gold},
        ],
        "kind": "nocall" if case.category in NOCALL_CATEGORIES else "call",
        "gold": gold,
        "tools": copy.deepcopy(case.tools),
        "suite": SUITE,
        "category": case.category,
        "id": case.id,
        "functions": copy.deepcopy(case.functions),
        "ground_truth": copy.deepcopy(case.ground_truth),
    }


def _tool_names(tools: Iterable[Any]) -> set[str]:
    """Names of tools or calls, glaive style `{"name"}` or OpenAI style `{"function": {"name"}}`."""
    names = set()
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        source = tool["function"] if isinstance(tool.get("function"), dict) else tool
        if isinstance(source.get("name"), str):
            names.add(source["name"])
    return names


def _names_in_text(text: str) -> set[str]:
    """Names of the JSON objects written in a text (tool schemas or calls, glaive or OpenAI
    style); objects nested in a decoded one are not searched."""
    decoder = json.JSONDecoder()
    names: set[str] = set()
    i = text.find("{")
    while i >= 0:
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            names |= _tool_names([obj])
        i = text.find("{", end)
    return names


def train_tool_names(row: dict[str, Any]) -> set[str]:
    """The tool names of a training row: from its "tools" list, or, when it has none, from the
    JSON objects in its system prompt and assistant replies."""
    tools = row.get("tools")
    if isinstance(tools, str):  # LLaMA-Factory's sharegpt rows keep the list as JSON text
        try:
            tools = json.loads(tools)
        except ValueError:
            tools = None
    if isinstance(tools, list):
        return _tool_names(tools)
    names: set[str] = set()
    for message in row.get("messages") or []:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            continue
        if message.get("role") in ("system", "assistant"):
            names |= _names_in_text(message["content"])
    return names


def seen_in_training(
    cases: Iterable[BfclCase], train_rows: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """How much of the suite the training rows already hold: BFCL function names (offered in
    any case) among the rows' tool names, and BFCL questions among the rows' first user
    messages, both after `normalise_query` for questions and exactly for names. The lists
    show the first `SHOWN_OVERLAP` overlaps in case order."""
    train_names: set[str] = set()
    train_queries: set[str] = set()
    n_train = 0
    for n_train, row in enumerate(train_rows, start=1):
        train_names |= train_tool_names(row)
        train_queries.add(normalise_query(row_query(row, f"train row {n_train}")))
    functions: dict[str, None] = {}  # insertion-ordered set
    seen_functions: list[str] = []
    questions_seen: list[str] = []
    cases = list(cases)
    for case in cases:
        for function in case.functions:
            name = function["name"]
            if name in functions:
                continue
            functions[name] = None
            if name in train_names:
                seen_functions.append(name)
        question = question_text(case)
        if normalise_query(question) in train_queries:
            questions_seen.append(question)
    return {
        "n_train_rows": n_train,
        "n_train_tool_names": len(train_names),
        "n_cases": len(cases),
        "n_functions": len(functions),
        "n_functions_seen": len(seen_functions),
        "functions_seen": seen_functions[:SHOWN_OVERLAP],
        "n_questions_seen": len(questions_seen),
        "questions_seen": questions_seen[:SHOWN_OVERLAP],
    }
