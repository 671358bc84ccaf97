"""Parse raw glaive-function-calling-v2 rows: `{"system": "SYSTEM: ... -\\n{tool}\\n\\n{tool}",
"chat": "USER: ...\\n\\n\\nASSISTANT: <functioncall> {...} <|endoftext|>..."}`."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from data.schema import (
    ASSISTANT,
    FUNCTION_RESPONSE,
    USER,
    Conversation,
    ParseError,
    ToolCall,
    Turn,
)

END_OF_TEXT = "<|endoftext|>"
FUNCTION_CALL_TAG = "<functioncall>"
# Text that introduces the tool objects in glaive's system message.
TOOLS_MARKER = "Use them if required -"

_ROLES = {"USER": USER, "ASSISTANT": ASSISTANT, "FUNCTION RESPONSE": FUNCTION_RESPONSE}
# A role marker starts a line; glaive separates turns by two or three newlines.
_TURN_SPLIT = re.compile(r"(?m)^(USER|ASSISTANT|FUNCTION RESPONSE):[ \t]?")
# `"arguments": '` — glaive wraps the arguments JSON in single quotes, which is not JSON.
_QUOTED_ARGUMENTS = re.compile(r"\"arguments\"\s*:\s*'")
# A handful of glaive replies write a call as "AI to=<name>: {...}" instead of <functioncall>.
_NONSTANDARD_CALL = re.compile(r"\bAI to=\s*[A-Za-z_][\w.\-]*")

_DECODER = json.JSONDecoder()


def tool_text_of(system: str) -> str:
    """The raw tool JSON of a glaive system message, stripped ('' when it lists none)."""
    marker = system.find(TOOLS_MARKER)
    if marker >= 0:
        return system[marker + len(TOOLS_MARKER) :].strip()
    brace = system.find("{")
    return system[brace:].strip() if brace >= 0 else ""


def parse_tool_text(tool_text: str) -> list[dict[str, Any]]:
    """Every JSON object in the tool text, in order; glaive puts blank lines between them."""
    tools: list[dict[str, Any]] = []
    pos, end = 0, len(tool_text)
    while True:
        while pos < end and tool_text[pos].isspace():
            pos += 1
        if pos >= end:
            return tools
        try:
            tool, pos = _DECODER.raw_decode(tool_text, pos)
        except json.JSONDecodeError as exc:
            raise ParseError("bad_tool_json", f"tool {len(tools) + 1}: {exc}") from None
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise ParseError("bad_tool_json", f"tool {len(tools) + 1} is not an object with a name")
        tools.append(tool)


@lru_cache(maxsize=1 << 16)
def shared_tools(tool_text: str) -> tuple[str, list[dict[str, Any]]]:
    """`parse_tool_text`, memoised: rows with the same tool text share one text and one list.

    glaive repeats system messages across many rows; sharing them keeps a full build's memory
    at the size of its distinct queries. The shared list must not be mutated."""
    return tool_text, parse_tool_text(tool_text)


def normalise_call(obj: Any) -> ToolCall:
    """A `{"name", "arguments"}` value with arguments as an object or a JSON string → ToolCall."""
    if not isinstance(obj, dict):
        raise ParseError("bad_call_json", "call is not a JSON object")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ParseError("bad_call_json", "call has no function name")
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):
        arguments = _loads_arguments(arguments) if arguments.strip() else {}
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ParseError("bad_call_json", f"arguments of {name!r} are not a JSON object")
    return ToolCall(name=name.strip(), arguments=arguments)


def _loads_arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    # An apostrophe escaped for the single-quoted wrapper is not a JSON escape.
    try:
        return json.loads(text.replace("\\'", "'"))
    except json.JSONDecodeError as exc:
        raise ParseError("bad_call_json", f"arguments are not JSON: {exc}") from None


def parse_call_body(body: str) -> ToolCall:
    """The text after `<functioncall>`: `{"name": "f", "arguments": '{"a": 1}'}` or plain JSON."""
    body = body.strip()
    try:
        # raw_decode: text after a well-formed call object is ignored, not an error.
        return normalise_call(_DECODER.raw_decode(body)[0])
    except json.JSONDecodeError:
        pass
    match = _QUOTED_ARGUMENTS.search(body)
    close = body.rfind("'")
    # The arguments string runs to the LAST quote: apostrophes inside it are not escaped.
    if match is None or close < match.end() or body[close + 1 :].strip()[:1] not in ("}", ","):
        raise ParseError("bad_call_json", f"unreadable call {body[:80]!r}")
    quoted = body[match.end() : close]
    arguments = _loads_arguments(quoted) if quoted.strip() else {}
    rest = body[: match.start()] + '"arguments": null' + body[close + 1 :]
    try:
        outer = json.loads(rest)
    except json.JSONDecodeError as exc:
        raise ParseError("bad_call_json", f"unreadable call {body[:80]!r}: {exc}") from None
    if isinstance(outer, dict):
        outer["arguments"] = arguments
    return normalise_call(outer)


def parse_assistant(content: str) -> Turn:
    tag = content.find(FUNCTION_CALL_TAG)
    if tag < 0:
        return Turn(ASSISTANT, content, nonstandard_call=bool(_NONSTANDARD_CALL.search(content)))
    call = parse_call_body(content[tag + len(FUNCTION_CALL_TAG) :])
    return Turn(ASSISTANT, content, call=call)


def split_turns(chat: str) -> list[Turn]:
    """USER / ASSISTANT / FUNCTION RESPONSE turns, `<|endoftext|>` removed, text stripped."""
    pieces = _TURN_SPLIT.split(chat)
    if pieces[0].strip():
        raise ParseError("text_before_first_turn", repr(pieces[0].strip()[:60]))
    turns: list[Turn] = []
    for marker, raw in zip(pieces[1::2], pieces[2::2], strict=True):
        role = _ROLES[marker]
        content = raw.replace(END_OF_TEXT, "").strip()
        turns.append(parse_assistant(content) if role == ASSISTANT else Turn(role, content))
    if not turns:
        raise ParseError("no_turns", "chat has no USER/ASSISTANT markers")
    return turns


def parse_glaive_row(row: dict[str, Any]) -> Conversation:
    """One raw glaive row → Conversation; raises ParseError (with an audit reason) otherwise."""
    system, chat = row.get("system"), row.get("chat")
    if not isinstance(system, str):
        raise ParseError("missing_system", "'system' is absent or not a string")
    if not isinstance(chat, str) or not chat.strip():
        raise ParseError("missing_chat", "'chat' is absent, empty or not a string")
    tool_text, tools = shared_tools(tool_text_of(system))
    return Conversation(
        tool_text=tool_text,
        tools=tools,
        turns=split_turns(chat),
        source_format="glaive",
    )
