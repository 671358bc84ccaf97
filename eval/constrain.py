"""Schema-constrained tool calls: a `TokenConstraint` (mlx_plamo3.generate) per reply, from the
tools a prompt offers, built with llguidance.

Contract:
- A reply that calls tools is what the adapter is trained to write, in its call format
  (data.call_format). `json`: ONE call `{"name": <name>, "arguments": {...}}` or a JSON list of
  calls, spaced exactly as `json.dumps` spaces them. `plamo`: PLaMo 3's markup, one outer
  `begin_tool_requests` ... `end_tool_requests` pair around one or more request blocks, each
  `begin_tool_request`, `begin_tool_name`, NAME, `end_tool_name`, `begin_tool_arguments`,
  `<|plamo:constrain|>json<|plamo:msg|>`, the arguments' JSON (spaced as json.dumps spaces it),
  `end_tool_arguments`, `end_tool_request`, with nothing between the tags, as `markup_text`
  writes them. Each tag is the tokens the tokenizer gives for it alone (tags are cut out of any
  text before it is segmented, so that is how they are encoded in context too): its control
  pieces as those exact tokens, its other pieces as literal text. In both formats a call's name
  is one of the offered tools and its arguments match that tool's `parameters` JSON Schema.
  When the call (or list, or markup) is complete only a stop token may follow
  (`mlx_plamo3.generate.stop_token_ids`).
- Modes (`constraint_factory`): `auto` leaves the reply free unless its first token opens a call
  (json: its text starts with `{` or `[`; plamo: it may begin the `begin_tool_requests` tag);
  from that token on it must be a call (or at most MAX_CALLS calls) as above. A reply starting
  with anything else, a special token included (unless it begins the markup), is free text and
  is never constrained: free replies are the tokens the model picks unconstrained. `required`:
  the reply is one or more calls. `none`: the reply may not start with a token that opens a
  call. Any other mode names a tool: the reply is exactly one call to it.
- The vocabulary is bridged to llguidance as bytes per token id: a BYTE piece is its byte, a
  control piece (`<|plamo:...|>`, kinds CONTROL/UNKNOWN/UNUSED) is a special token that no
  grammar here can produce, except the stop tokens after a complete call; any other piece is its
  UTF-8 text.
- Schemas as tools write them, degraded rather than refused (each degradation is a note on the
  factory, `ConstraintFactory.notes`): an object schema with `properties` and no
  `additionalProperties` gets `additionalProperties: false` (a call passes only declared
  arguments; stricter than the schema, never outside it); a `type` JSON Schema does not know
  (BFCL's "tuple", "any", "float" left untranslated, say) and an empty `enum` are dropped, so
  that part accepts any value; keywords llguidance does not implement (an unknown `format`,
  say) are ignored (its lenient mode); a property whose schema still does not compile accepts
  any value, and a tool whose parameters still do not compile accepts any arguments object.
  Missing parameters mean no arguments (`{}`). Arguments come in the order the schema lists
  its properties (llguidance's rule; JSON Schema leaves order free), so a gold call written in
  another order is refused as written (benchmarks/bench_constrain.py counts the BFCL gold calls
  refused, for this or for breaking their own schemas).
- `tool_call_constraint(tokenizer, tools, tool_choice, call_format)` is the server's entry
  point: the constraint of one request from OpenAI-style tools and tool_choice.

A grammar guarantees the form of a complete reply, not that the model completes it: a reply cut
at the token budget (a string the model never closes, say) is cut, as it is unconstrained.
Grammar compilation is cached per tokenizer and tool list; each reply gets a fresh copy of the
compiled matcher. Masks are computed on the CPU (llguidance is Rust, no torch or CUDA), so the
same code serves MLX on CPU and on Metal.
"""

from __future__ import annotations

import copy
import json
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import llguidance
import numpy as np

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
    check_call_format,
)
from mlx_plamo3.errors import InputError, PlamoError
from mlx_plamo3.generate import TokenConstraint, stop_token_ids
from mlx_plamo3.tokenizer import CONTROL_PATTERN, Plamo3Tokenizer

AUTO, REQUIRED, NONE = "auto", "required", "none"
# Pieces llguidance treats as special tokens are marked by this first byte (no UTF-8 text has it).
SPECIAL_MARK = b"\xff"
SPECIAL_KINDS = ("CONTROL", "UNKNOWN", "UNUSED")
# Where a call starts: a reply whose first character is one of these is a call in `auto`.
CALL_OPENERS = b"{["
# json.dumps' separators, and no other whitespace, as the adapter is trained on (call_text).
JSON_LAYOUT = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
# Calls in one reply at most: twice BFCL's largest parallel answer (8). Bounds the list, so a
# model cannot loop on calls for ever.
MAX_CALLS = 16
JSON_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
# Keys whose values are schemas, or lists or maps of schemas, walked when schemas are tidied.
SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains")
SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
SUBSCHEMA_MAP_KEYS = ("properties", "$defs", "definitions")
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
ANY_ARGUMENTS = {"type": "object"}
COMPILED_CACHE_SIZE = 1024
# A Lark grammar's options line: llguidance does not force tokens (see `_grammar`).
NO_FORCING = '%llguidance {"no_forcing": true}\n'


class ConstraintError(PlamoError, RuntimeError):
    """A grammar could not go on: llguidance stopped in an error state."""


def token_bytes(tokenizer: Plamo3Tokenizer) -> tuple[list[bytes], list[int]]:
    """(bytes of every token id, the ids of special tokens), as llguidance reads a vocabulary."""
    control = re.compile(CONTROL_PATTERN)
    pieces = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    tokens, special = [], []
    for token_id, piece in enumerate(pieces):
        kind = tokenizer.kind(token_id)
        if kind == "BYTE":  # "<0xHH>"
            tokens.append(bytes.fromhex(piece[3:5]))
        elif kind in SPECIAL_KINDS or control.fullmatch(piece):
            tokens.append(SPECIAL_MARK + piece.encode("utf-8"))
            special.append(token_id)
        else:
            tokens.append(piece.encode("utf-8"))
    return tokens, special


class _Vocabulary:
    """The tokenizer as llguidance's TokenizerWrapper reads it (attributes and a call)."""

    def __init__(self, tokenizer: Plamo3Tokenizer) -> None:
        self.tokens, self.special_token_ids = token_bytes(tokenizer)
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self._encode = tokenizer.encode

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return self._encode(text, add_special_tokens=False)


def _mask_of(bitmask: bytes, vocab_size: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")
    return bits[:vocab_size].astype(bool)


# ---- schemas -------------------------------------------------------------------------------


def _tidy(schema: Any, where: str, notes: list[str]) -> Any:
    """`schema` with unknown types and empty enums dropped and objects closed (module docstring);
    a copy, the input is left as it is."""
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    kind = out.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "type" in out and not all(isinstance(k, str) and k in JSON_TYPES for k in kinds):
        notes.append(f"{where}: type {json.dumps(kind)} is not JSON Schema's; any value accepted")
        del out["type"]
    if out.get("enum") == []:
        notes.append(f"{where}: empty enum dropped")
        del out["enum"]
    if "required" in out and not (
        isinstance(out["required"], list) and all(isinstance(r, str) for r in out["required"])
    ):
        notes.append(f"{where}: 'required' is not a list of names; dropped")
        del out["required"]
    for key in SUBSCHEMA_KEYS:
        if key in out:
            out[key] = _tidy(out[key], f"{where}.{key}", notes)
    for key in SUBSCHEMA_LIST_KEYS:
        if isinstance(out.get(key), list):
            out[key] = [_tidy(s, f"{where}.{key}[{i}]", notes) for i, s in enumerate(out[key])]
    for key in SUBSCHEMA_MAP_KEYS:
        if isinstance(out.get(key), Mapping):
            out[key] = {k: _tidy(s, f"{where}.{key}.{k}", notes) for k, s in out[key].items()}
    if isinstance(out.get("properties"), Mapping):
        out.setdefault("additionalProperties", False)
    return out


def call_schema(name: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema of one call to tool `name`, its keys in the trained order."""
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": dict(parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def reply_schema(calls: Sequence[Mapping[str, Any]], single: bool) -> dict[str, Any]:
    """One of `calls` (call schemas), or, unless `single`, a list of 1 to MAX_CALLS of them."""
    one = {"anyOf": list(calls)}
    several = {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_CALLS}
    return one if single else {"anyOf": [one, several]}


def _json_term(schema: Mapping[str, Any]) -> str:
    """A grammar term for JSON matching `schema`, laid out as json.dumps lays it out, keywords
    llguidance does not implement ignored."""
    options = {**JSON_LAYOUT, "lenient": True, "json_allow_general_unicode_escapes": True}
    return "%json " + json.dumps({**schema, "x-guidance": options})


def _grammar(schema: Mapping[str, Any]) -> str:
    """The llguidance grammar of JSON matching `schema` (`_json_term`), with no forced tokens.
    llguidance otherwise allows, in a stretch the grammar fixes (the rest of a tool name, a key),
    only the tokens our tokenizer gives for those bytes alone; a unigram tokenizer may split them
    differently in context, so that would refuse the model's own tokens (15 of BFCL's 1,274 gold
    calls, replayed on the tiny vocabulary)."""
    return NO_FORCING + "start: " + _json_term(schema)


def json_reply_grammar(tools: Sequence[tuple[str, Mapping[str, Any]]], single: bool) -> str:
    """The `json` format's grammar: one call to one of `tools` ((name, arguments schema)), or,
    unless `single`, a list of 1 to MAX_CALLS calls."""
    return _grammar(reply_schema([call_schema(*tool) for tool in tools], single))


def markup_reply_grammar(
    tools: Sequence[tuple[str, Mapping[str, Any]]], single: bool, tag: Callable[[str], str]
) -> str:
    """The `plamo` format's grammar: one outer pair around one request block (`single`) or 1 to
    MAX_CALLS of them, each naming one of `tools` ((name, arguments schema)) with arguments of
    its schema; `tag` gives a markup tag's grammar terms."""
    calls = [
        f"call_{index}: {json.dumps(name)} {tag(END_TOOL_NAME)} {tag(BEGIN_TOOL_ARGUMENTS)} "
        f"{tag(CONSTRAIN_JSON)} {tag(MSG)} {_json_term(schema)}"
        for index, (name, schema) in enumerate(tools)
    ]
    repeat = "" if single else f"{{1,{MAX_CALLS}}}"
    return "\n".join(
        [
            NO_FORCING + f"start: {tag(BEGIN_TOOL_REQUESTS)} request{repeat} "
            f"{tag(END_TOOL_REQUESTS)}",
            f"request: {tag(BEGIN_TOOL_REQUEST)} {tag(BEGIN_TOOL_NAME)} "
            f"({' | '.join(f'call_{index}' for index in range(len(tools)))}) "
            f"{tag(END_TOOL_ARGUMENTS)} {tag(END_TOOL_REQUEST)}",
            *calls,
        ]
    )


def _compiles(schema: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """(whether `schema` compiles leniently, llguidance's error or what it ignored)."""
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(_grammar(schema))
    return not failed, messages


def tool_parameters(tool: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """The arguments schema of `tool` as the grammar uses it (degraded as the module says)."""
    name = tool["name"]
    parameters = tool.get("parameters")
    if parameters is None or parameters == {}:
        return dict(NO_ARGUMENTS)
    if not isinstance(parameters, Mapping):
        notes.append(f"{name}: parameters are not a schema object; any arguments accepted")
        return dict(ANY_ARGUMENTS)
    schema = _tidy(parameters, name, notes)
    if "type" not in schema and "properties" in schema:
        schema["type"] = "object"
    ok, messages = _compiles(schema)
    properties = schema.get("properties")
    if not ok and isinstance(properties, Mapping):
        for key, sub in properties.items():
            sub_ok, sub_messages = _compiles(sub)
            if not sub_ok:
                notes.append(f"{name}.{key}: {'; '.join(sub_messages)}; any value accepted")
                schema["properties"] = {**schema["properties"], key: {}}
        ok, messages = _compiles(schema)
    if not ok:
        notes.append(f"{name}: {'; '.join(messages)}; any arguments accepted")
        return dict(ANY_ARGUMENTS)
    notes += [f"{name}: ignored: {message}" for message in messages]
    return schema


def offered_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tools as `{"name", "parameters", ...}`: glaive style as given, OpenAI style
    (`{"type": "function", "function": {...}}`) unwrapped; a nameless tool is an InputError."""
    out = []
    for index, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise InputError(f"tools[{index}]: expected an object with a string 'name'")
        out.append(dict(function))
    return out


# ---- the constraint ------------------------------------------------------------------------


class CallConstraint:
    """One reply's `TokenConstraint`: free (`free_start` says which first tokens keep a reply
    free, None when none do) until the first token, then the call grammar or nothing."""

    def __init__(self, matcher: Any, free_start: np.ndarray | None, vocab_size: int) -> None:
        self.matcher, self.free_start, self.vocab_size = matcher, free_start, vocab_size
        self.started, self.free = False, False

    def allowed(self) -> np.ndarray | None:
        if self.free:
            return None
        if self.matcher is None:  # mode none, before the first token
            return self.free_start
        if self.matcher.is_error():
            raise ConstraintError(f"tool-call grammar failed: {self.matcher.get_error()}")
        mask = _mask_of(self.matcher.compute_bitmask(), self.vocab_size)
        if not self.started and self.free_start is not None:
            mask |= self.free_start
        return mask

    def accept(self, token: int) -> None:
        if self.free:
            return
        first, self.started = not self.started, True
        if first and self.free_start is not None and self.free_start[token]:
            self.free, self.matcher = True, None
            return
        if not self.matcher.consume_token(token):
            raise ConstraintError(
                f"token {token} is outside the tool-call grammar: {self.matcher.get_error()}"
            )


class ConstraintFactory:
    """Fresh `CallConstraint`s for replies offered `tools` in `mode`, calls written in
    `call_format` (see the module docstring); `notes` lists where the tools' schemas were
    degraded."""

    def __init__(
        self,
        grammars: ToolCallGrammars,
        tools: Sequence[Mapping[str, Any]],
        mode: str,
        call_format: str = DEFAULT_CALL_FORMAT,
    ) -> None:
        tools = offered_tools(tools)
        names = [tool["name"] for tool in tools]
        if mode not in (AUTO, REQUIRED, NONE) and mode not in names:
            raise InputError(
                f"tool choice {mode!r} is neither auto, required, none nor an offered tool "
                f"({', '.join(names) or 'none offered'})"
            )
        if mode == REQUIRED and not tools:
            raise InputError("tool choice 'required' needs at least one tool")
        self.grammars, self.mode = grammars, mode
        self.free_start = grammars.free_start(check_call_format(call_format))
        self.notes: list[str] = []
        self.grammar: str | None = None
        if tools and mode != NONE:
            chosen = [t for t in tools if mode in (AUTO, REQUIRED) or t["name"] == mode]
            schemas = [(t["name"], tool_parameters(t, self.notes)) for t in chosen]
            single = mode not in (AUTO, REQUIRED)
            if call_format == JSON:
                self.grammar = json_reply_grammar(schemas, single)
            else:
                self.grammar = markup_reply_grammar(schemas, single, grammars.tag_terms)

    def __call__(self) -> TokenConstraint | None:
        if self.grammar is None:  # auto without tools: nothing to constrain
            return None if self.mode == AUTO else CallConstraint(None, self.free_start, 0)
        matcher = self.grammars.matcher(self.grammar).deep_copy()
        free_start = self.free_start if self.mode == AUTO else None
        return CallConstraint(matcher, free_start, self.grammars.vocab_size)


class ToolCallGrammars:
    """llguidance's view of one tokenizer, and the call grammars compiled for it."""

    def __init__(self, tokenizer: Plamo3Tokenizer) -> None:
        vocabulary = _Vocabulary(tokenizer)
        self.vocab_size = len(vocabulary.tokens)
        self.tokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(vocabulary),
            n_vocab=self.vocab_size,
            eos_token=sorted(stop_token_ids(tokenizer)),
        )
        self.encode, self.decode = vocabulary, tokenizer.decode
        self.special = np.zeros(self.vocab_size, dtype=bool)
        self.special[vocabulary.special_token_ids] = True
        self.empty = np.array([not t for t in vocabulary.tokens], dtype=bool)
        self.json_opens = np.array(
            [bool(t) and t[0] in CALL_OPENERS for t in vocabulary.tokens], dtype=bool
        )
        self.matcher = lru_cache(maxsize=COMPILED_CACHE_SIZE)(self._compile)
        self.free_start = lru_cache(maxsize=None)(self._free_start)

    def _compile(self, grammar: str) -> Any:
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"tool-call grammar does not compile: {matcher.get_error()}")
        return matcher

    def tag_terms(self, tag: str) -> str:
        """A markup tag as grammar terms: the tokens the tokenizer gives for it alone, control
        pieces as those exact tokens (`<[id]>`), runs of other pieces as their literal text."""
        terms, run = [], []
        for token in self.encode(tag):
            if self.special[token]:
                terms += [json.dumps(self.decode(run))] if run else []
                terms.append(f"<[{token}]>")
                run = []
            else:
                run.append(token)
        terms += [json.dumps(self.decode(run))] if run else []
        return " ".join(terms)

    def _free_start(self, call_format: str) -> np.ndarray:
        """The first tokens that leave a reply free in `auto`: those that cannot open a call in
        `call_format` (the empty pieces, no text at all, excepted)."""
        if call_format == JSON:
            opens = self.json_opens
        else:  # what the opening tag's grammar allows first
            opening = self.matcher(NO_FORCING + "start: " + self.tag_terms(BEGIN_TOOL_REQUESTS))
            opens = _mask_of(opening.compute_bitmask(), self.vocab_size)
        return ~opens & (self.special | ~self.empty)


_GRAMMARS: weakref.WeakKeyDictionary[Plamo3Tokenizer, ToolCallGrammars] = (
    weakref.WeakKeyDictionary()
)


def grammars_for(tokenizer: Plamo3Tokenizer) -> ToolCallGrammars:
    """The (cached) grammars of `tokenizer`."""
    if tokenizer not in _GRAMMARS:
        _GRAMMARS[tokenizer] = ToolCallGrammars(tokenizer)
    return _GRAMMARS[tokenizer]


def constraint_factory(
    tokenizer: Plamo3Tokenizer,
    tools: Sequence[Mapping[str, Any]],
    mode: str = AUTO,
    call_format: str = DEFAULT_CALL_FORMAT,
) -> ConstraintFactory:
    """Fresh constraints for replies offered `tools` (glaive or OpenAI style) in `mode` (auto,
    required, none or a tool's name), calls written in `call_format` (json or plamo). Raises
    InputError for a mode naming no offered tool or an unknown call format."""
    tools = copy.deepcopy(list(tools))
    return ConstraintFactory(grammars_for(tokenizer), tools, mode, call_format)


def tool_choice_mode(tool_choice: Any) -> str:
    """The mode of an OpenAI `tool_choice`: "auto", "required", "none", or the name in
    `{"type": "function", "function": {"name": ...}}`."""
    if tool_choice in (AUTO, REQUIRED, NONE):
        return tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return function["name"]
    raise InputError(
        f"tool_choice: expected 'auto', 'required', 'none' or "
        f'{{"type": "function", "function": {{"name": ...}}}}, got {json.dumps(tool_choice)}'
    )


def tool_call_constraint(
    tokenizer: Plamo3Tokenizer,
    tools: Sequence[Mapping[str, Any]],
    tool_choice: Any = AUTO,
    call_format: str = DEFAULT_CALL_FORMAT,
) -> TokenConstraint | None:
    """A fresh constraint for one request offered `tools` (OpenAI or glaive style) with an
    OpenAI `tool_choice`, calls written in `call_format`; None when nothing is constrained (auto
    with no tools). Raises InputError for a bad tool_choice, tool or call format."""
    mode = tool_choice_mode(tool_choice)
    return constraint_factory(tokenizer, tools, mode, call_format)()
