"""PLaMo 3's chat template: a conversation rendered to text, and which of its tokens are the
assistant's.

What is rendered: the template sees `messages`, `tools`, `documents`, `add_generation_prompt`,
the tokenizer's special tokens (`bos_token`, `eos_token`, ...) and any extra keyword arguments
as variables, as transformers passes them. PLaMo 3's format, as the packaged fallback
`chat_template.jinja` writes it: `bos_token + '<|plamo:tag|>'`, then
`role<|plamo:msg|>content<|plamo:tag|>` for each message; the generation prompt
`assistant<|plamo:msg|>` opens an assistant turn. The tokenizer chooses the template text (the
checkpoint's chat_template.jinja, else tokenizer_config.json's `chat_template`, else the fallback)
and hands it here with where it came from, which every error message names.

How it is compiled, as transformers does it: an immutable sandboxed jinja2 environment with
trim_blocks, lstrip_blocks and the loopcontrols extension; the globals `raise_exception` (its
message becomes the render error) and `strftime_now`; a `tojson` filter that keeps non-ASCII
text as is (jinja2's own escapes for HTML). Compiled templates are cached by their text.

`render_conversation` is apply_chat_template's text: messages checked (keys with None values
dropped, a known role and string content, errors naming the message index), an empty
conversation refused, and the options transformers offers for tensors or dicts refused. The
tokenizer encodes the render without adding bos/eos, since the template writes them itself.

The assistant-token mask comes from token ids of prefix renders, never from searching text: the
tokens of assistant message k are those the render of messages[:k+1] adds to the render of
messages[:k] with the generation prompt (its content and `<|plamo:tag|>` under the PLaMo
template). Each shorter render must be an id prefix of the longer, and each turn's render a
prefix of the whole conversation's; a template or tokenizer that does not split cleanly at turn
boundaries raises naming the message. The ids come from a `render_ids(messages,
add_generation_prompt)` callable the tokenizer passes in, so this module never imports it.

Public sources the facts come from (read, not copied):
- kazukiminemura/plamo3_benchmark (OpenVINO port of plamo-3-nict-8b-base): the template renders
  `bos_token + '<|plamo:tag|>'` first.
- The study (rajagurunath/pfn-plamo-inference-study): turns are
  `role<|plamo:msg|>content<|plamo:tag|>`; training prefixes are the generation-prompt render.
- transformers' chat-template rendering: an immutable sandboxed jinja2 environment with
  trim_blocks, lstrip_blocks and loopcontrols, `raise_exception`, a non-ASCII-preserving `tojson`,
  special tokens as template variables, and the render tokenized with add_special_tokens=False.
Not confirmed (the Hub is unreachable): the exact official template text; the packaged fallback
is reconstructed from the facts above.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mlx_plamo3.errors import PlamoError

TEMPLATE_FILE = "chat_template.jinja"
FALLBACK_TEMPLATE = Path(__file__).with_name(TEMPLATE_FILE)
KNOWN_ROLES = ("system", "user", "assistant", "tool")
# apply_chat_template options of transformers that return tensors or dicts; not offered here.
UNSUPPORTED_TEMPLATE_OPTIONS = (
    "return_tensors",
    "return_dict",
    "return_assistant_tokens_mask",
    "continue_final_message",
    "padding",
    "truncation",
    "max_length",
    "tokenizer_kwargs",
)

# Token ids of a render of `messages`, with or without the generation prompt.
RenderIds = Callable[[Sequence[Mapping[str, Any]], bool], list[int]]


class ChatTemplateError(PlamoError, ValueError):
    """A chat template that fails to compile or render, or messages it cannot take."""


def default_chat_template() -> str:
    """The packaged chat template text (also written into tiny test checkpoints)."""
    return FALLBACK_TEMPLATE.read_text(encoding="utf-8")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter keeps non-ASCII text as is, unlike jinja2's HTML-safe tojson.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


@lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """The template compiled in a sandbox set up like transformers' (cached by text)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Messages as plain dicts, keys with None values dropped (as transformers does); raises
    naming the message index for a missing or unknown role or non-string content."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"messages must be a list of dicts, got {type(messages).__name__}")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"message {index} must be a dict, got {type(message).__name__}")
        message = {key: value for key, value in message.items() if value is not None}
        role = message.get("role")
        if role not in KNOWN_ROLES:
            raise ChatTemplateError(
                f"message {index}: unknown role {role!r}; expected one of {KNOWN_ROLES}"
            )
        if not isinstance(message.get("content"), str):
            got = type(message.get("content")).__name__
            raise ChatTemplateError(f"message {index} ({role}): content must be a str, not {got}")
        out.append(message)
    return out


def render_template(
    template_text: str,
    template_source: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool,
    tools: list[Any] | None,
    documents: list[Any] | None,
    variables: Mapping[str, Any],
) -> str:
    """The template's text for `messages` (not validated, may be empty); `variables` are the
    special tokens and extra keyword arguments. Errors name `template_source`."""
    try:
        template = compile_chat_template(template_text)
    except jinja2.TemplateSyntaxError as err:
        raise ChatTemplateError(
            f"{template_source}:{err.lineno}: chat template does not compile ({err.message})"
        ) from None
    try:
        return template.render(
            messages=messages,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as err:
        raise ChatTemplateError(
            f"{template_source}: chat template failed to render: {err}"
        ) from None
    except (TypeError, KeyError, AttributeError) as err:
        raise ChatTemplateError(
            f"{template_source}: chat template failed to render ({type(err).__name__}: {err})"
        ) from None


def render_conversation(
    template_text: str,
    template_source: str,
    conversation: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool,
    tools: list[Any] | None,
    documents: list[Any] | None,
    variables: dict[str, Any],
) -> str:
    """apply_chat_template's text: unsupported options refused (a falsy one is dropped from
    `variables`), `conversation` validated and required non-empty, then rendered."""
    for option in UNSUPPORTED_TEMPLATE_OPTIONS:
        if variables.get(option):
            raise TypeError(f"apply_chat_template: {option!r} is not supported here")
        variables.pop(option, None)
    messages = validate_messages(conversation)
    if not messages:
        raise ChatTemplateError("cannot apply the chat template to an empty conversation")
    return render_template(
        template_text,
        template_source,
        messages,
        add_generation_prompt,
        tools,
        documents,
        variables,
    )


def _require_prefix(prefix: Sequence[int], ids: Sequence[int], what: str) -> None:
    if len(prefix) > len(ids) or list(ids[: len(prefix)]) != list(prefix):
        pairs = zip(prefix, ids, strict=False)
        at = next((k for k, (a, b) in enumerate(pairs) if a != b), min(len(prefix), len(ids)))
        raise ChatTemplateError(
            f"{what}: the shorter render's {len(prefix)} ids are not a prefix of the longer "
            f"render's {len(ids)} ids (first difference at token {at}); the template or the "
            "tokenizer does not split cleanly at turn boundaries"
        )


def chat_prompt_and_full_ids(
    messages: Sequence[Mapping[str, Any]], render_ids: RenderIds
) -> tuple[list[int], list[int]]:
    """(ids of the conversation before its last assistant turn, with the generation prompt;
    ids of the whole conversation). The first is checked to be a prefix of the second."""
    messages = validate_messages(messages)
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ChatTemplateError("the conversation has no assistant message")
    prompt = render_ids(messages[:last], True)
    full = render_ids(messages, False)
    _require_prefix(prompt, full, f"prompt before assistant message {last}")
    return prompt, full


def assistant_token_mask(
    messages: Sequence[Mapping[str, Any]], render_ids: RenderIds
) -> tuple[list[int], list[bool]]:
    """(ids of the whole conversation, True exactly on each assistant turn's own tokens), from
    prefix renders as the module docstring says."""
    messages = validate_messages(messages)
    full = render_ids(messages, False)
    mask = [False] * len(full)
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ChatTemplateError("the conversation has no assistant message")
    for k in turns:
        start = render_ids(messages[:k], True)
        end = render_ids(messages[: k + 1], False)
        _require_prefix(start, end, f"assistant message {k}: prompt vs. turn")
        _require_prefix(end, full, f"assistant message {k}: turn vs. conversation")
        mask[len(start) : len(end)] = [True] * (len(end) - len(start))
    return full, mask
