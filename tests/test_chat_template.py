"""The PLaMo 3 chat template: hand-written golden renders, the seed's 2-shot prompt, tool
schemas that need no escaping, the assistant-only loss mask (also from any render callable, the
module needing no tokenizer) and the template's errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from convert.tiny_vocab import write_tiny_tokenizer
from mlx_plamo3 import chat_template
from mlx_plamo3.chat_template import (
    ChatTemplateError,
    assistant_token_mask,
    default_chat_template,
    render_template,
)
from mlx_plamo3.tokenizer import Plamo3Tokenizer

BOS, TAG, MSG = "<|plamo:bos|>", "<|plamo:tag|>", "<|plamo:msg|>"

# The seed study's system prompt (GUIDE.md section 1) and its 2-shot examples.
SEED_SYSTEM = (
    "You are a helpful assistant with access to the following tools. When the user's request "
    'requires a tool, respond with ONLY a JSON object {"name": <function-name>, "arguments": '
    "<args-object>}. If no tool is needed, answer normally.\nTools:\n"
)
FEWSHOT = [
    {"role": "user", "content": "What's the weather like in Tokyo today?"},
    {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"location": "Tokyo"}}'},
    {"role": "user", "content": "Thanks! And who wrote 'Kokoro'?"},
    {
        "role": "assistant",
        "content": "'Kokoro' was written by Natsume Soseki, first published in 1914.",
    },
]

# glaive-function-calling-v2 row 25475 (byte-exact copy recorded in
# /work/shared/reference/glaive/glaive-function-calling-v2.sample.jsonl, row "bellwether_row_25475",
# from a public test file): a clarifying question, then a call, a function response, an answer.
GLAIVE_TOOL = {
    "name": "detect_language",
    "description": "Detect the language of a given text",
    "parameters": {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "The text to detect the language of"}
        },
        "required": ["text"],
    },
}
GLAIVE_CHAT = (
    "USER: I have a text here and I am not sure what language it is. Can you help me identify "
    "it?\n\n\nASSISTANT: Of course, I can help with that. Please provide me with the text. "
    '<|endoftext|>\n\n\nUSER: Here it is - "Je suis un étudiant"\n\n\nASSISTANT: <functioncall> '
    '{"name": "detect_language", "arguments": \'{"text": "Je suis un étudiant"}\'} '
    '<|endoftext|>\n\n\nFUNCTION RESPONSE: {"language": "French"}\n\n\nASSISTANT: The text you '
    "provided is in French. <|endoftext|>\n\n\n"
)
# The same row as messages in the seed's recipe: the call as json.dumps({"name", "arguments"}).
GLAIVE_MESSAGES = [
    {"role": "system", "content": SEED_SYSTEM + json.dumps(GLAIVE_TOOL, indent=4)},
    {
        "role": "user",
        "content": "I have a text here and I am not sure what language it is. "
        "Can you help me identify it?",
    },
    {
        "role": "assistant",
        "content": "Of course, I can help with that. Please provide me with the text.",
    },
    {"role": "user", "content": 'Here it is - "Je suis un étudiant"'},
    {
        "role": "assistant",
        "content": json.dumps(
            {"name": "detect_language", "arguments": {"text": "Je suis un étudiant"}},
            ensure_ascii=False,
        ),
    },
    {"role": "tool", "content": '{"language": "French"}'},
    {"role": "assistant", "content": "The text you provided is in French."},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Plamo3Tokenizer:
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    write_tiny_tokenizer(path)
    return Plamo3Tokenizer.from_pretrained(path)


def spans(ids: list[int], mask: list[bool]) -> list[list[int]]:
    """The maximal runs of ids where `mask` is True."""
    runs: list[list[int]] = []
    previous = False
    for token_id, flag in zip(ids, mask, strict=True):
        if flag and not previous:
            runs.append([])
        if flag:
            runs[-1].append(token_id)
        previous = flag
    return runs


# ---- golden renders (written by hand from the documented format) ---------------------------

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
]


def test_render_full_conversation(tok: Plamo3Tokenizer) -> None:
    expected = (
        "<|plamo:bos|><|plamo:tag|>system<|plamo:msg|>Be brief.<|plamo:tag|>"
        "user<|plamo:msg|>Hi there<|plamo:tag|>assistant<|plamo:msg|>Hello!<|plamo:tag|>"
    )
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == expected


def test_render_with_generation_prompt(tok: Plamo3Tokenizer) -> None:
    expected = (
        "<|plamo:bos|><|plamo:tag|>system<|plamo:msg|>Be brief.<|plamo:tag|>"
        "user<|plamo:msg|>Hi there<|plamo:tag|>assistant<|plamo:msg|>"
    )
    rendered = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert rendered == expected


def test_seed_two_shot_prompt(tok: Plamo3Tokenizer) -> None:
    tools = '{"name": "get_weather", "parameters": {"location": "string"}}'
    messages = [
        {"role": "system", "content": SEED_SYSTEM + tools},
        *FEWSHOT,
        {"role": "user", "content": "Weather in Osaka?"},
    ]
    expected = (
        "<|plamo:bos|><|plamo:tag|>system<|plamo:msg|>You are a helpful assistant with access to"
        " the following tools. When the user's request requires a tool, respond with ONLY a JSON"
        ' object {"name": <function-name>, "arguments": <args-object>}. If no tool is needed,'
        ' answer normally.\nTools:\n{"name": "get_weather", "parameters": {"location": "string"}}'
        "<|plamo:tag|>user<|plamo:msg|>What's the weather like in Tokyo today?<|plamo:tag|>"
        'assistant<|plamo:msg|>{"name": "get_weather", "arguments": {"location": "Tokyo"}}'
        "<|plamo:tag|>user<|plamo:msg|>Thanks! And who wrote 'Kokoro'?<|plamo:tag|>"
        "assistant<|plamo:msg|>'Kokoro' was written by Natsume Soseki, first published in 1914."
        "<|plamo:tag|>user<|plamo:msg|>Weather in Osaka?<|plamo:tag|>assistant<|plamo:msg|>"
    )
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == expected
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert ids[:2] == [tok.bos_token_id, 16] and ids[-1] == 19
    assert tok.decode(ids) == expected


def test_tool_schema_with_unicode_quotes_and_newlines_is_verbatim(tok: Plamo3Tokenizer) -> None:
    schema = {
        "name": "translate",
        "description": 'Übersetze "Text" ins 日本語 — it\'s fine\n\tand a\\backslash 😀',
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
    content = SEED_SYSTEM + json.dumps(schema, ensure_ascii=False, indent=2)
    messages = [{"role": "system", "content": content}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == f"{BOS}{TAG}system{MSG}{content}{TAG}user{MSG}Hi{TAG}assistant{MSG}"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert tok.decode(ids) == text
    assert ids.count(16) == 3 and ids.count(19) == 3


def test_packaged_template_is_the_tiny_checkpoints(tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == default_chat_template()


# ---- prompt/full ids and the assistant mask -----------------------------------------------


def test_prompt_is_a_prefix_of_the_full_conversation(tok: Plamo3Tokenizer) -> None:
    messages = [
        {"role": "system", "content": SEED_SYSTEM + json.dumps(GLAIVE_TOOL)},
        {"role": "user", "content": "What language is 'Je suis un étudiant'?"},
        {"role": "assistant", "content": '{"name": "detect_language", "arguments": {}}'},
    ]
    prompt, full = tok.chat_prompt_and_full_ids(messages)
    assert full[: len(prompt)] == prompt
    assert tok.decode(full[len(prompt) :]) == messages[-1]["content"] + TAG
    generation = tok.apply_chat_template(messages[:-1], add_generation_prompt=True)
    assert prompt == generation


def test_assistant_mask_on_a_glaive_conversation(tok: Plamo3Tokenizer) -> None:
    assert "Je suis un étudiant" in GLAIVE_CHAT and '"language": "French"' in GLAIVE_CHAT
    ids, mask = tok.assistant_token_mask(GLAIVE_MESSAGES)
    assert ids == tok.apply_chat_template(GLAIVE_MESSAGES)
    assert len(mask) == len(ids)
    assistant = [m["content"] for m in GLAIVE_MESSAGES if m["role"] == "assistant"]
    assert [tok.decode(run) for run in spans(ids, mask)] == [c + TAG for c in assistant]
    # Everything unmasked is the rest of the render: specials, roles, system, user, tool turns.
    unmasked = tok.decode([i for i, flag in zip(ids, mask, strict=True) if not flag])
    rest = (
        BOS
        + TAG
        + "".join(
            f"{m['role']}{MSG}" + ("" if m["role"] == "assistant" else m["content"] + TAG)
            for m in GLAIVE_MESSAGES
        )
    )
    assert unmasked == rest


def test_consecutive_assistant_turns_are_separate_spans(tok: Plamo3Tokenizer) -> None:
    messages = [
        {"role": "user", "content": "Tax on $70,000?"},
        {"role": "assistant", "content": "Sure, let me calculate it."},
        {"role": "assistant", "content": '{"name": "calculate_tax", "arguments": {"income": 7}}'},
    ]
    ids, mask = tok.assistant_token_mask(messages)
    runs = [tok.decode(run) for run in spans(ids, mask)]
    assert runs == [messages[1]["content"] + TAG, messages[2]["content"] + TAG]


def test_mask_needs_only_a_render_callable() -> None:
    # Code points of the packaged template's render stand in for token ids.
    def render_ids(messages: list[dict[str, str]], generation: bool) -> list[int]:
        text = render_template(
            default_chat_template(), "<test>", messages, generation, None, None, {"bos_token": BOS}
        )
        return [ord(char) for char in text]

    ids, mask = assistant_token_mask(CONVERSATION, render_ids)
    turns = "".join(f"{m['role']}{MSG}{m['content']}{TAG}" for m in CONVERSATION)
    assert "".join(map(chr, ids)) == BOS + TAG + turns
    assert ["".join(map(chr, run)) for run in spans(ids, mask)] == ["Hello!" + TAG]


def test_the_template_module_does_not_import_the_tokenizer() -> None:
    # The tokenizer imports the template module; the other way round would be a cycle.
    tree = ast.parse(Path(chat_template.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    assert "mlx_plamo3.tokenizer" not in imported


def test_prefix_violation_is_reported(tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path)
    # A template whose generation prompt differs from how it renders the assistant turn.
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    tok = Plamo3Tokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with pytest.raises(ChatTemplateError, match="not a prefix"):
        tok.chat_prompt_and_full_ids(messages)
    with pytest.raises(ChatTemplateError, match="assistant message 1"):
        tok.assistant_token_mask(messages)


# ---- template sources and transformers-compatible rendering -------------------------------


def test_template_source_precedence(tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "from-config"
    config_path.write_text(json.dumps(config))
    messages = [{"role": "user", "content": "x"}]
    assert Plamo3Tokenizer.from_pretrained(tmp_path).render_chat(messages) != "from-config"
    (tmp_path / "chat_template.jinja").unlink()
    assert Plamo3Tokenizer.from_pretrained(tmp_path).render_chat(messages) == "from-config"
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    tok = Plamo3Tokenizer.from_pretrained(tmp_path)
    assert tok.chat_template == default_chat_template()
    assert tok.render_chat(messages) == f"{BOS}{TAG}user{MSG}x{TAG}"


def test_transformers_template_features(tok: Plamo3Tokenizer) -> None:
    template = (
        "{% for m in messages %}{% if loop.index0 > 0 %}{% break %}{% endif %}"
        "{{ m.content }}{% endfor %}|{{ tools | tojson }}|{{ eos_token }}|{{ extra }}"
    )
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    tools = [{"name": "天気", "q": 'say "hi"'}]
    text = tok.apply_chat_template(
        messages, tools=tools, chat_template=template, tokenize=False, extra="kw"
    )
    assert text == 'a|[{"name": "天気", "q": "say \\"hi\\""}]|<|plamo:eos|>|kw'


# ---- errors -------------------------------------------------------------------------------


def test_unknown_role_and_bad_content(tok: Plamo3Tokenizer) -> None:
    with pytest.raises(ChatTemplateError, match="message 1: unknown role 'robot'"):
        tok.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "robot", "content": ""}]
        )
    with pytest.raises(ChatTemplateError, match=r"message 0 \(user\): content must be a str"):
        tok.apply_chat_template([{"role": "user", "content": None}])
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        tok.apply_chat_template([])
    with pytest.raises(ChatTemplateError, match="no assistant message"):
        tok.assistant_token_mask([{"role": "user", "content": "a"}])


def test_template_errors_say_why(tok: Plamo3Tokenizer) -> None:
    messages = [{"role": "user", "content": "a"}]
    with pytest.raises(ChatTemplateError, match=r":2: chat template does not compile"):
        tok.apply_chat_template(messages, chat_template="ok\n{% if %}")
    with pytest.raises(ChatTemplateError, match="failed to render: roles must alternate"):
        tok.apply_chat_template(
            messages, chat_template="{{ raise_exception('roles must alternate') }}"
        )
    with pytest.raises(TypeError, match="return_tensors"):
        tok.apply_chat_template(messages, return_tensors="np")
