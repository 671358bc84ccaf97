"""The frozen eval: the study's 40 call and 12 strict no-call questions with their gold answers
(`frozen_eval.json`), given back the tool lists they were asked with, taken from the source."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.call_format import DEFAULT_CALL_FORMAT, render_calls
from data.leakage import normalise_query
from data.prompt import example_row, render_tools
from data.schema import ROW_KINDS, STRICT_NOCALL, Candidate, ToolCall
from mlx_plamo3.errors import InputError
from mlx_plamo3.io import read_json

FROZEN_EVAL_FILE = Path(__file__).with_name("frozen_eval.json")

FROM_SOURCE = "source"
SYNTHESIZED = "synthesized"
MISSING = "missing"


@dataclass(frozen=True)
class FrozenQuestion:
    kind: str
    question: str
    gold: str
    note: str = ""

    @property
    def key(self) -> str:
        return normalise_query(self.question)

    def gold_call(self) -> ToolCall:
        obj = json.loads(self.gold)
        return ToolCall(name=obj["name"], arguments=obj["arguments"])


def load_frozen_questions(path: Path = FROZEN_EVAL_FILE) -> list[FrozenQuestion]:
    """The frozen questions, checked: a kind, a question, a gold; call golds parse as calls."""
    items = read_json(path)["questions"]
    questions = []
    for i, item in enumerate(items):
        for key in ("kind", "question", "gold"):
            if not isinstance(item.get(key), str):
                raise InputError(f"{path}: question {i}: missing string {key!r}")
        if item["kind"] not in ROW_KINDS:
            raise InputError(f"{path}: question {i}: 'kind' must be one of {ROW_KINDS}")
        question = FrozenQuestion(
            item["kind"], item["question"], item["gold"], item.get("note", "")
        )
        if question.kind == "call":
            try:
                question.gold_call()
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{path}: question {i}: 'gold' is not a call: {exc}") from None
        questions.append(question)
    return questions


def schema_of(value: Any) -> dict[str, Any]:
    """A JSON-schema fragment describing one example value (bool before int: bool is an int)."""
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        item_schemas = {json.dumps(schema_of(item), sort_keys=True) for item in value}
        if len(item_schemas) == 1:
            return {"type": "array", "items": json.loads(item_schemas.pop())}
        return {"type": "array"}
    if isinstance(value, dict):
        return {"type": "object", "properties": {k: schema_of(v) for k, v in value.items()}}
    return {"type": "null"}


def synthesize_tool(call: ToolCall) -> dict[str, Any]:
    """A stand-in tool for a gold call whose source row is absent: every argument required."""
    return {
        "name": call.name,
        "description": "",
        "parameters": {
            "type": "object",
            "properties": {name: schema_of(value) for name, value in call.arguments.items()},
            "required": list(call.arguments),
        },
    }


def pick_match(question: FrozenQuestion, candidates: list[Candidate]) -> Candidate | None:
    """The source row a frozen question was drawn from; duplicates are ranked, earliest wins."""
    if not candidates:
        return None
    if question.kind == "call":
        gold = question.gold_call()

        def rank(c: Candidate) -> tuple[bool, bool, int]:
            return (gold.name in c.tool_names, c.call == gold, -c.index)
    else:

        def rank(c: Candidate) -> tuple[bool, bool, int]:
            return (c.label == STRICT_NOCALL, bool(c.tools), -c.index)

    return max(candidates, key=rank)


@dataclass
class FrozenReport:
    from_source: int = 0
    synthesized: list[str] = field(default_factory=list)  # call questions absent from the source
    missing: list[str] = field(default_factory=list)  # no-call questions absent from the source

    @property
    def absent(self) -> list[str]:
        return self.synthesized + self.missing


def frozen_eval_rows(
    questions: list[FrozenQuestion],
    matches: dict[str, list[Candidate]],
    call_format: str = DEFAULT_CALL_FORMAT,
) -> tuple[list[dict[str, Any]], FrozenReport]:
    """One eval row per frozen question, in the frozen order; `matches` maps a normalised query
    to every source candidate with that query (duplicates included). A call row's assistant
    message is the gold in `call_format`; its `gold` stays the study's JSON."""
    rows, report = [], FrozenReport()
    for question in questions:
        match = pick_match(question, matches.get(question.key, []))
        reply = question.gold
        if question.kind == "call":
            gold = question.gold_call()
            if call_format != DEFAULT_CALL_FORMAT:
                reply = render_calls([(gold.name, gold.arguments)], call_format)
            if match is not None and gold.name in match.tool_names:
                tool_text, tools, origin = match.tool_text, match.tools, FROM_SOURCE
            else:
                tools = [synthesize_tool(gold)]
                tool_text, origin = render_tools(tools), SYNTHESIZED
                report.synthesized.append(question.question)
        elif match is not None:
            tool_text, tools, origin = match.tool_text, match.tools, FROM_SOURCE
        else:
            tool_text, tools, origin = "", [], MISSING
            report.missing.append(question.question)
        report.from_source += origin == FROM_SOURCE
        row = example_row(tool_text, question.question, reply, question.kind, tools)
        row["gold"] = question.gold
        row["tools_source"] = origin
        rows.append(row)
    return rows, report
