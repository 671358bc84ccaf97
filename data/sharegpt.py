"""Parse LLaMA-Factory's sharegpt tool format: `{"conversations": [{"from": "human"|"gpt"|
"function_call"|"observation", "value": ...}], "tools": "<JSON list as a string>"}`.

The `role`/`content` spelling of the same turns (LLaMA-Factory's configurable tags, OpenAI style
`messages`) is accepted too, since users hold their data both ways."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from data.glaive import normalise_call
from data.prompt import render_tools
from data.schema import ASSISTANT, FUNCTION_RESPONSE, USER, Conversation, ParseError, Turn

FUNCTION_CALL = "function_call"
_ROLES = {
    "human": USER,
    "user": USER,
    "gpt": ASSISTANT,
    "assistant": ASSISTANT,
    FUNCTION_CALL: FUNCTION_CALL,
    "observation": FUNCTION_RESPONSE,
    "tool": FUNCTION_RESPONSE,
    "function": FUNCTION_RESPONSE,
}


def parse_tools_field(value: Any) -> list[dict[str, Any]]:
    """`tools` as LLaMA-Factory stores it (a JSON string) or already decoded."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ParseError("bad_tool_json", f"'tools' is not JSON: {exc}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ParseError("bad_tool_json", "'tools' is not a list of tool objects")
    tools = []
    for i, tool in enumerate(value, start=1):
        # OpenAI style wraps the schema: {"type": "function", "function": {...}}.
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            tool = tool["function"]
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise ParseError("bad_tool_json", f"tool {i} is not an object with a name")
        tools.append(tool)
    return tools


@lru_cache(maxsize=1 << 16)
def _shared_tools(raw: str) -> tuple[str, list[dict[str, Any]]]:
    # Rows with the same tools string share one rendered text and one list (never mutated).
    tools = parse_tools_field(raw)
    return render_tools(tools), tools


def parse_call_value(value: str) -> Turn:
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ParseError("bad_call_json", f"function_call value is not JSON: {exc}") from None
    if isinstance(obj, list):
        # The study's target holds exactly one call; parallel calls have no place in it.
        if len(obj) != 1:
            raise ParseError("parallel_calls", f"{len(obj)} calls in one turn")
        obj = obj[0]
    return Turn(ASSISTANT, value, call=normalise_call(obj))


def _turn_fields(turn: Any, position: int) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise ParseError("bad_turn", f"turn {position} is not an object")
    role = turn.get("from", turn.get("role"))
    value = turn.get("value", turn.get("content"))
    if not isinstance(role, str) or not isinstance(value, str):
        raise ParseError("bad_turn", f"turn {position} lacks a string 'from'/'value'")
    return role, value


def parse_sharegpt_row(row: dict[str, Any]) -> Conversation:
    """One sharegpt row → Conversation; raises ParseError (with an audit reason) otherwise."""
    raw_turns = row.get("conversations", row.get("messages"))
    if not isinstance(raw_turns, list) or not raw_turns:
        raise ParseError("bad_conversations", "'conversations' is absent, empty or not a list")
    raw_tools = row.get("tools")
    if isinstance(raw_tools, str):
        tool_text, tools = _shared_tools(raw_tools)
    else:
        tools = parse_tools_field(raw_tools)
        tool_text = render_tools(tools)
    turns: list[Turn] = []
    for position, raw in enumerate(raw_turns, start=1):
        role, value = _turn_fields(raw, position)
        if role == "system":
            continue  # the study's own system prompt replaces any stored one
        mapped = _ROLES.get(role)
        if mapped is None:
            raise ParseError("unknown_role", f"turn {position} has role {role!r}")
        if mapped == FUNCTION_CALL:
            turns.append(parse_call_value(value))
        else:
            turns.append(Turn(mapped, value.strip()))
    return Conversation(tool_text=tool_text, tools=tools, turns=turns, source_format="sharegpt")
