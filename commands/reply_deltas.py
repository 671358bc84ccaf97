"""A chat reply as OpenAI chat-completion deltas, tool calls included, decided as text arrives.

`ReplyDeltas` reads the reply's text piece by piece and answers deltas that are never taken back:
the streamed chunks carry them as they come, and the non-streamed message is the same deltas
merged (`ReplyMessage`), so the two always agree.

The rules, with tools offered (without tools every reply is content, streamed as it comes), for
the adapter's call format (data.call_format):
- A reply whose non-blank text cannot open a call is content, streamed at once. A call opens
  with `{` or `[` in the `json` format, with the `begin_tool_requests` tag in `plamo`; in
  `plamo` a reply is held only while its text is still a beginning of that tag.
- Otherwise the text is held while it may still be a call. Once it reads the head of a call to
  an offered tool up to the `{` that opens its arguments (json: `{"name": "<tool>",
  "arguments": {`, or a list opening with such an object; plamo: the opening tag, a request
  block's tags around the name, and the `<|plamo:constrain|>json<|plamo:msg|>` prefix when it
  is there), the reply is a tool call: a first delta names the call (index, id, type, name,
  arguments "") and the arguments' raw JSON text follows in fragments as it arrives. Further
  objects of the list (further request blocks) become further calls the same way; whatever
  follows the list (the closing tag) is dropped. A reply cut off inside its call stays a call
  whose arguments are the text so far (OpenAI does the same).
- A held reply that never reached that point is decided when it ends by the eval's
  `parse_calls`, which reads both formats: calls that all name offered tools are sent whole
  (arguments re-serialized as JSON), else the reply is content.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from data.call_format import (
    BEGIN_TOOL_ARGUMENTS,
    BEGIN_TOOL_NAME,
    BEGIN_TOOL_REQUEST,
    BEGIN_TOOL_REQUESTS,
    CONSTRAIN_JSON,
    DEFAULT_CALL_FORMAT,
    END_TOOL_ARGUMENTS,
    END_TOOL_NAME,
    END_TOOL_REQUEST,
    END_TOOL_REQUESTS,
    JSON,
    MSG,
)
from eval.bfcl_checker import parse_calls

# The head of a call object up to the `{` that opens its arguments (not consumed).
CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\{)')
LIST_OPEN = re.compile(r"\s*\[")
NEXT_IN_LIST = re.compile(r"\s*(,|\])")
# The markup's request block from its name tag up to the `{` that opens the arguments (not
# consumed); whitespace between tags and the constrain/msg prefix optional, as parse_markup reads.
MARKUP_HEAD = re.compile(
    rf"\s*{re.escape(BEGIN_TOOL_NAME)}((?:(?!<\|plamo:).)*){re.escape(END_TOOL_NAME)}\s*"
    rf"{re.escape(BEGIN_TOOL_ARGUMENTS)}\s*(?:{re.escape(CONSTRAIN_JSON)})?\s*"
    rf"(?:{re.escape(MSG)})?\s*(?=\{{)",
    re.DOTALL,
)
# What may follow a request block's arguments, then a block: another block, or the closing tag.
MARKUP_CALL_END = (END_TOOL_ARGUMENTS, END_TOOL_REQUEST)

# Where the reader is.
START, HELD, CONTENT, ARGUMENTS, CALL_REST, BETWEEN, DONE = range(7)
PARTIAL = -1  # read_tags: the text so far is a beginning of the tags


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def call_name(head: re.Match) -> str | None:
    """The name a CALL_HEAD match holds, or None when its escapes are not valid JSON."""
    try:
        return json.loads(f'"{head.group(1)}"')
    except ValueError:
        return None


def markup_name(head: re.Match) -> str | None:
    """The name a MARKUP_HEAD match holds, or None when it is blank (parse_markup refuses it)."""
    return head.group(1).strip() or None


def read_tags(text: str, start: int, tags: tuple[str, ...]) -> int | None:
    """Read `tags` in order from `start`, whitespace allowed before each: the index past the last
    one; PARTIAL while the text so far is still a beginning of them; None when it is not."""
    pos = start
    for tag in tags:
        pos = len(text) - len(text[pos:].lstrip())
        if not text.startswith(tag, pos):
            return PARTIAL if tag.startswith(text[pos:]) else None
        pos += len(tag)
    return pos


class JsonDepth:
    """Nesting depth of JSON text read so far, strings and escapes understood."""

    def __init__(self) -> None:
        self.depth, self.in_string, self.escaped = 0, False, False

    def read_until_closed(self, text: str, start: int) -> int:
        """Read `text` from `start`; the index just past the character that brings the depth
        back to 0, or len(text) if it is not there yet."""
        for index in range(start, len(text)):
            char = text[index]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return index + 1
        return len(text)


class ReplyDeltas:
    """The deltas of one reply; see the module docstring."""

    def __init__(self, offered_tools: set[str], call_format: str = DEFAULT_CALL_FORMAT):
        self.offered_tools = offered_tools
        self.markup = call_format != JSON
        self.text = ""
        self.state = START if offered_tools else CONTENT
        self.cursor = 0  # text before it has been read (and sent, where it is sent)
        self.in_list = False
        self.calls = 0
        self.scanner = JsonDepth()

    @property
    def call_closed(self) -> bool:
        """The calls ended (their JSON, or the markup's closing tag, came whole, or text that
        is not another call followed them): the reply was not cut off inside them."""
        return self.state == DONE

    def add(self, piece: str) -> list[dict[str, Any]]:
        """Deltas the new text `piece` releases."""
        if not piece:
            return []
        self.text += piece
        if self.state == CONTENT:
            return [{"content": piece}]
        if self.state == START:
            stripped = self.text.lstrip()
            if not stripped:
                return []
            if self.markup:
                if BEGIN_TOOL_REQUESTS.startswith(stripped):
                    return []  # may still open the markup
                opens_call = stripped.startswith(BEGIN_TOOL_REQUESTS)
            else:
                opens_call = stripped[0] in "{["
            if not opens_call:
                self.state = CONTENT
                return [{"content": self.text}]
            self.state = HELD
        return self.read_markup() if self.markup else self.read()

    def finish(self) -> list[dict[str, Any]]:
        """Deltas of what was held, once the reply has ended."""
        if self.state == START and self.text:
            return [{"content": self.text}]
        if self.state != HELD:
            return []
        calls = parse_calls(self.text)
        if calls and all(call["name"] in self.offered_tools for call in calls):
            self.state = DONE
            deltas = []
            for call in calls:
                deltas.append(self.call_start(call["name"]))
                deltas.append(self.arguments(json.dumps(call["arguments"])))
            return deltas
        return [{"content": self.text}]

    def call_start(self, name: str) -> dict[str, Any]:
        self.calls += 1
        function = {"name": name, "arguments": ""}
        call = {"index": self.calls - 1, "id": new_call_id(), "type": "function"}
        return {"tool_calls": [{**call, "function": function}]}

    def arguments(self, fragment: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": self.calls - 1, "function": {"arguments": fragment}}]}

    def read(self) -> list[dict[str, Any]]:
        """Advance through the held text as far as it can be decided."""
        deltas: list[dict[str, Any]] = []
        while True:
            if self.state == HELD:
                if self.cursor == 0 and (opened := LIST_OPEN.match(self.text)):
                    self.in_list, self.cursor = True, opened.end()
                head = CALL_HEAD.match(self.text, self.cursor)
                if head is None or call_name(head) not in self.offered_tools:
                    return deltas  # undecided until more text (or the end) comes
                deltas.append(self.call_start(call_name(head)))
                self.state, self.cursor, self.scanner = ARGUMENTS, head.end(), JsonDepth()
            elif self.state == ARGUMENTS:
                if not self.read_arguments(deltas):
                    return deltas
                # The arguments closed; the call object is still open (depth 1 in it).
                self.state, self.scanner.depth = CALL_REST, 1
            elif self.state == CALL_REST:
                self.cursor = self.scanner.read_until_closed(self.text, self.cursor)
                if self.scanner.depth > 0:
                    return deltas
                self.state = BETWEEN if self.in_list else DONE
            elif self.state == BETWEEN:
                separator = NEXT_IN_LIST.match(self.text, self.cursor)
                if separator is None:
                    if self.text[self.cursor :].strip():
                        self.state = DONE  # not a list of calls past this point: dropped
                    return deltas
                if separator.group(1) == "]":
                    self.state = DONE
                    return deltas
                head = CALL_HEAD.match(self.text, separator.end())
                if head is None or call_name(head) is None:
                    return deltas  # wait for the next call's head
                deltas.append(self.call_start(call_name(head)))
                self.state, self.cursor, self.scanner = ARGUMENTS, head.end(), JsonDepth()
            else:  # DONE: the rest of the reply is not sent
                return deltas

    def read_arguments(self, deltas: list[dict[str, Any]]) -> bool:
        """Send the arguments' text read so far; whether their JSON has closed."""
        end = self.scanner.read_until_closed(self.text, self.cursor)
        if end > self.cursor:
            deltas.append(self.arguments(self.text[self.cursor : end]))
        self.cursor = end
        return self.scanner.depth == 0

    def read_markup(self) -> list[dict[str, Any]]:
        """`read` for the plamo format: request blocks inside the opening tag's pair."""
        deltas: list[dict[str, Any]] = []
        while True:
            if self.state in (HELD, BETWEEN):
                if self.state == BETWEEN:
                    closed = read_tags(self.text, self.cursor, (END_TOOL_REQUESTS,))
                    if closed not in (None, PARTIAL):
                        self.state = DONE
                        return deltas
                    after = read_tags(self.text, self.cursor, (BEGIN_TOOL_REQUEST,))
                    if after is None and closed is None:
                        self.state = DONE  # not a request block past this point: dropped
                        return deltas
                else:
                    after = read_tags(self.text, 0, (BEGIN_TOOL_REQUESTS, BEGIN_TOOL_REQUEST))
                if after in (None, PARTIAL):
                    return deltas  # undecided until more text (or the end) comes
                head = MARKUP_HEAD.match(self.text, after)
                name = None if head is None else markup_name(head)
                if name is None or (self.state == HELD and name not in self.offered_tools):
                    return deltas
                deltas.append(self.call_start(name))
                self.state, self.cursor, self.scanner = ARGUMENTS, head.end(), JsonDepth()
            elif self.state == ARGUMENTS:
                if not self.read_arguments(deltas):
                    return deltas
                self.state = CALL_REST
            elif self.state == CALL_REST:
                end = read_tags(self.text, self.cursor, MARKUP_CALL_END)
                if end == PARTIAL:
                    return deltas
                if end is None:
                    self.state = DONE  # the block does not close as a block: the rest dropped
                    return deltas
                self.state, self.cursor = BETWEEN, end
            else:  # DONE
                return deltas


class ReplyMessage:
    """Deltas merged into the non-streamed message's content and tool_calls."""

    def __init__(self) -> None:
        self.content = ""
        self.tool_calls: list[dict[str, Any]] = []

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for delta in deltas:
            self.content += delta.get("content", "")
            for call in delta.get("tool_calls", []):
                if call["index"] == len(self.tool_calls):
                    fields = {key: value for key, value in call.items() if key != "index"}
                    self.tool_calls.append({**fields, "function": dict(call["function"])})
                else:
                    function = self.tool_calls[call["index"]]["function"]
                    function["arguments"] += call["function"]["arguments"]
