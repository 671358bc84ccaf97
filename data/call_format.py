"""The two ways an assistant turn can hold tool calls, defined once: rendering and parsing.

- `json` (the study's, the default): one call is `json.dumps({"name", "arguments"})`, byte for
  byte as the study wrote it; several calls are a JSON list of those objects.
- `plamo`: PLaMo 3's own tool-request markup, which PFN's SGLang detector calls the "trained
  format" and vLLM's `plamo3` tool parser reads. One outer `begin_tool_requests` ...
  `end_tool_requests` pair holds one inner request block per call, with no separator:
  `<|plamo:begin_tool_request:plamo|><|plamo:begin_tool_name:plamo|>NAME<|plamo:end_tool_name:plamo|>
  <|plamo:begin_tool_arguments:plamo|><|plamo:constrain|>json<|plamo:msg|>{ARGUMENTS}
  <|plamo:end_tool_arguments:plamo|><|plamo:end_tool_request:plamo|>` (one line in the text).
  The chat template then ends the turn with `<|plamo:tag|>`.

Rendering the markup writes the arguments with `ensure_ascii=False` and escapes every `<` inside
them as `\\u003c` (still the same JSON value): the tokenizer cuts any `<|plamo:NAME|>` out of the
text as a control token, so a string argument holding `<|plamo:tag|>` would otherwise end the
turn. The system prompt does not change with the format (`data.prompt.build_system_prompt`):
every prompt builder (frozen and BFCL eval, the server, the model card) stays format-blind, so
train and eval prompts cannot drift; the adapter learns the format from its targets.

Parsing (`parse_markup`) reads a markup reply into the calls' `{"name", "arguments"}` objects,
the very objects the `json` format's text decodes to, so the readers of replies
(`eval.scoring.parse_prediction`, `eval.bfcl_checker.parse_calls`) score both formats alike. A
reply holding `begin_tool_requests` is read as markup, as the public PLaMo parsers do: text
before it is ignored; it parses only when complete (every block closed, the outer pair too),
each name non-empty and each arguments payload one JSON value (the `constrain`/`msg` prefix may
be absent, whitespace between tags is allowed), else None. Any other reply is read by the
study's JSON span rule.

Public sources the facts come from (read, not copied): vLLM's PLaMo 3 parser tests and
`plamo3_parser_common` (the tag strings, tokens ids, an incomplete block gives no call),
SGLang's `plamo3_detector.py` (`Plamo3ToolDetector`, the optional msg prefix, whitespace
between tags)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlx_plamo3.errors import InputError

JSON = "json"
PLAMO = "plamo"
CALL_FORMATS = (JSON, PLAMO)
DEFAULT_CALL_FORMAT = JSON
# The key that records the format in a dataset manifest, adapter config and eval summary.
CALL_FORMAT_KEY = "call_format"

BEGIN_TOOL_REQUESTS = "<|plamo:begin_tool_requests:plamo|>"
END_TOOL_REQUESTS = "<|plamo:end_tool_requests:plamo|>"
BEGIN_TOOL_REQUEST = "<|plamo:begin_tool_request:plamo|>"
END_TOOL_REQUEST = "<|plamo:end_tool_request:plamo|>"
BEGIN_TOOL_NAME = "<|plamo:begin_tool_name:plamo|>"
END_TOOL_NAME = "<|plamo:end_tool_name:plamo|>"
BEGIN_TOOL_ARGUMENTS = "<|plamo:begin_tool_arguments:plamo|>"
END_TOOL_ARGUMENTS = "<|plamo:end_tool_arguments:plamo|>"
CONSTRAIN_JSON = "<|plamo:constrain|>json"
MSG = "<|plamo:msg|>"

Call = tuple[str, Mapping[str, Any]]  # (name, arguments)

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"\s*")


def call_text(name: str, arguments: Mapping[str, Any]) -> str:
    """The study's target for one call (`json.dumps`), byte for byte."""
    return json.dumps({"name": name, "arguments": arguments})


def calls_text(calls: Sequence[Call]) -> str:
    """Several calls in the `json` format: a JSON list of `call_text` objects."""
    return "[" + ", ".join(call_text(name, arguments) for name, arguments in calls) + "]"


def markup_arguments(arguments: Mapping[str, Any]) -> str:
    """The arguments JSON of one request block, `<` escaped (see the module docstring)."""
    return json.dumps(arguments, ensure_ascii=False).replace("<", "\\u003c")


def markup_text(calls: Sequence[Call]) -> str:
    """Calls in PLaMo 3's tool-request markup: one outer pair, one request block per call."""
    if not calls:
        raise ValueError("the markup needs at least one call")
    blocks = "".join(
        f"{BEGIN_TOOL_REQUEST}{BEGIN_TOOL_NAME}{name}{END_TOOL_NAME}"
        f"{BEGIN_TOOL_ARGUMENTS}{CONSTRAIN_JSON}{MSG}{markup_arguments(arguments)}"
        f"{END_TOOL_ARGUMENTS}{END_TOOL_REQUEST}"
        for name, arguments in calls
    )
    return BEGIN_TOOL_REQUESTS + blocks + END_TOOL_REQUESTS


def render_calls(calls: Sequence[Call], call_format: str) -> str:
    """An assistant turn holding `calls` in `call_format` (one call: a bare object in json)."""
    check_call_format(call_format)
    if call_format == PLAMO:
        return markup_text(calls)
    if len(calls) == 1:
        return call_text(*calls[0])
    return calls_text(calls)


def check_call_format(call_format: str, where: str = "call format") -> str:
    if call_format not in CALL_FORMATS:
        raise InputError(f"{where}: unknown call format {call_format!r}; expected {CALL_FORMATS}")
    return call_format


def recorded_call_format(document: Mapping[str, Any], where: str) -> str:
    """The format a manifest, adapter config or eval summary records; json when it records
    none (everything written before the format was recorded was json)."""
    if not isinstance(document, Mapping):
        raise InputError(f"{where}: expected a JSON object")
    value = document.get(CALL_FORMAT_KEY, DEFAULT_CALL_FORMAT)
    return check_call_format(value, f"{where}: {CALL_FORMAT_KEY!r}")


def has_markup(text: str) -> bool:
    """Whether a reply opens PLaMo's tool-request markup."""
    return BEGIN_TOOL_REQUESTS in text


def _expect(text: str, pos: int, tag: str) -> int | None:
    """The position after `tag` at `pos` (whitespace before it skipped), else None."""
    pos = _SPACE.match(text, pos).end()
    return pos + len(tag) if text.startswith(tag, pos) else None


def _request(text: str, pos: int) -> tuple[dict[str, Any], int] | None:
    """One request block from `pos` (just after `begin_tool_request`): (call, end) or None."""
    pos = _expect(text, pos, BEGIN_TOOL_NAME)
    if pos is None:
        return None
    name_end = text.find(END_TOOL_NAME, pos)
    name = text[pos:name_end].strip() if name_end >= 0 else ""
    if not name or "<|plamo:" in name:
        return None
    pos = _expect(text, name_end + len(END_TOOL_NAME), BEGIN_TOOL_ARGUMENTS)
    if pos is None:
        return None
    pos = _expect(text, pos, CONSTRAIN_JSON) or pos
    pos = _expect(text, pos, MSG) or pos
    try:
        # raw_decode: a string argument may hold any tag text, even the closing ones.
        arguments, pos = _DECODER.raw_decode(text, _SPACE.match(text, pos).end())
    except (ValueError, RecursionError):
        return None
    pos = _expect(text, pos, END_TOOL_ARGUMENTS)
    pos = None if pos is None else _expect(text, pos, END_TOOL_REQUEST)
    return None if pos is None else ({"name": name, "arguments": arguments}, pos)


def parse_markup(text: str) -> list[dict[str, Any]] | None:
    """The calls of the first complete markup block in `text`, in order, or None."""
    start = text.find(BEGIN_TOOL_REQUESTS)
    if start < 0:
        return None
    pos, calls = start + len(BEGIN_TOOL_REQUESTS), []
    while (after := _expect(text, pos, BEGIN_TOOL_REQUEST)) is not None:
        parsed = _request(text, after)
        if parsed is None:
            return None
        call, pos = parsed
        calls.append(call)
    if not calls or _expect(text, pos, END_TOOL_REQUESTS) is None:
        return None
    return calls
