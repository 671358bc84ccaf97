"""Parsing raw glaive rows: the 13 genuine rows bundled in data/samples plus edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import data
from data.glaive import (
    parse_call_body,
    parse_glaive_row,
    parse_tool_text,
    split_turns,
    tool_text_of,
)
from data.labels import to_candidate
from data.prompt import render_tools
from data.schema import (
    ASSISTANT,
    CALL,
    DEFERRED_CALL,
    FUNCTION_RESPONSE,
    NO_TOOLS,
    NONSTANDARD_CALL,
    STRICT_NOCALL,
    USER,
    ParseError,
    ToolCall,
)

SAMPLE = Path(data.__file__).parent / "samples" / "glaive-function-calling-v2.sample.jsonl"
TOOLS_HEAD = (
    "SYSTEM: You are a helpful assistant with access to the following functions. "
    "Use them if required -\n"
)
NO_FUNCTIONS_SYSTEM = (
    "SYSTEM: You are a helpful assistant, with no access to external functions.\n\n"
)


def sample_rows() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def tool(name: str, **properties: str) -> str:
    """A tool object as glaive writes it."""
    schema = {
        "name": name,
        "description": f"the {name} tool",
        "parameters": {
            "type": "object",
            "properties": {k: {"type": v} for k, v in properties.items()},
            "required": list(properties),
        },
    }
    return json.dumps(schema, indent=4)


def glaive_row(chat: str, *tools: str) -> dict:
    if not tools:
        return {"system": NO_FUNCTIONS_SYSTEM, "chat": chat}
    return {"system": TOOLS_HEAD + "\n\n".join(tools) + "\n\n", "chat": chat}


# Labels of the 13 sample rows, read off the rows by hand (see data/samples/SOURCES.md):
# 0 clarifies then calls; 1 lists no functions; 2 calls at once; 3 clarifies then calls;
# 4 "let me calculate" then a second ASSISTANT turn calls; 5-8 call at once; 9 refuses;
# 10 calls at once; 11 refuses; 12 calls at once.
SAMPLE_LABELS = [
    DEFERRED_CALL,
    NO_TOOLS,
    CALL,
    DEFERRED_CALL,
    DEFERRED_CALL,
    CALL,
    CALL,
    CALL,
    CALL,
    STRICT_NOCALL,
    CALL,
    STRICT_NOCALL,
    CALL,
]


def test_sample_rows_get_their_hand_read_labels() -> None:
    rows = sample_rows()
    assert len(rows) == 13
    labels = [to_candidate(parse_glaive_row(row), i).label for i, row in enumerate(rows)]
    assert labels == SAMPLE_LABELS


def test_row_25475_turns_call_and_unicode() -> None:
    conversation = parse_glaive_row(sample_rows()[0])
    assert [t.role for t in conversation.turns] == [
        USER,
        ASSISTANT,
        USER,
        ASSISTANT,
        FUNCTION_RESPONSE,
        ASSISTANT,
    ]
    assert conversation.turns[2].content == 'Here it is - "Je suis un étudiant"'
    assert conversation.turns[3].call == ToolCall(
        "detect_language", {"text": "Je suis un étudiant"}
    )
    assert conversation.turns[4].content == '{"language": "French"}'
    assert all("<|endoftext|>" not in t.content for t in conversation.turns)
    assert [t["name"] for t in conversation.tools] == ["detect_language"]


def test_first_reply_call_becomes_the_seeds_json_target() -> None:
    candidate = to_candidate(parse_glaive_row(sample_rows()[2]), 2)
    assert candidate.query == (
        "I am looking for a book but I can't remember the title. "
        "The author's name is George Orwell."
    )
    assert candidate.reply == (
        '{"name": "search_books", "arguments": {"query": "", "author": "George Orwell"}}'
    )
    assert [t["name"] for t in candidate.tools] == ["search_books", "calculate_tip"]


def test_apostrophe_inside_single_quoted_arguments() -> None:
    # Row "anyscale_create_reminder": '{"reminder_text": "Doctor's appointment", ...}'.
    conversation = parse_glaive_row(sample_rows()[3])
    call = conversation.turns[3].call
    assert call == ToolCall(
        "create_reminder",
        {
            "reminder_text": "Doctor's appointment",
            "reminder_date": "2022-09-15",
            "reminder_time": "10:00",
        },
    )


def test_nested_object_arguments() -> None:
    conversation = parse_glaive_row(sample_rows()[7])
    assert conversation.turns[1].call == ToolCall(
        "calculate_area", {"shape": "rectangle", "measurements": {"length": 5, "width": 3}}
    )


def test_no_functions_system_and_double_newline_turns() -> None:
    conversation = parse_glaive_row(sample_rows()[1])
    assert conversation.tool_text == "" and conversation.tools == []
    assert [(t.role, t.content) for t in conversation.turns] == [
        (USER, "Assign this occupation to the appropriate category\nNurse"),
        (ASSISTANT, "Healthcare"),
        (USER, "What about an electrician?"),
        (ASSISTANT, "Skilled Trades"),
    ]


def test_tool_text_is_glaives_raw_text_and_rendering_matches_it() -> None:
    # The sharegpt path renders tools with render_tools; on every real glaive row this gives
    # back glaive's own text, so prompts from both formats look the same.
    for row in sample_rows():
        conversation = parse_glaive_row(row)
        _, marker, tail = row["system"].partition("Use them if required -")
        assert conversation.tool_text == (tail.strip() if marker else "")
        assert render_tools(conversation.tools) == conversation.tool_text


def test_several_tools_are_all_parsed() -> None:
    tools = parse_tool_text(tool_text_of(sample_rows()[10]["system"]))
    assert [t["name"] for t in tools] == ["generate_random_number", "analyze_website_performance"]


def test_call_in_a_later_turn_only_is_a_deferred_call() -> None:
    chat = (
        "USER: Book me a taxi.\n\n\nASSISTANT: Where to? <|endoftext|>\n\n\n"
        "USER: The airport.\n\n\n"
        'ASSISTANT: <functioncall> {"name": "book_taxi", "arguments": \'{"to": "airport"}\'} '
        "<|endoftext|>\n\n\n"
    )
    candidate = to_candidate(parse_glaive_row(glaive_row(chat, tool("book_taxi", to="string"))), 0)
    assert candidate.label == DEFERRED_CALL
    assert candidate.call is None
    assert candidate.reply == "Where to?"


def test_no_call_anywhere_is_strict_and_unicode_survives() -> None:
    chat = "USER: 東京の天気は？ café\n\n\nASSISTANT: わかりません。 <|endoftext|>\n\n\n"
    candidate = to_candidate(
        parse_glaive_row(glaive_row(chat, tool("get_weather", city="string"))), 0
    )
    assert candidate.label == STRICT_NOCALL
    assert candidate.query == "東京の天気は？ café"
    assert candidate.reply == "わかりません。"


def test_ai_to_form_is_a_nonstandard_call_not_a_strict_nocall() -> None:
    # Two of the seed's 12 "strict" no-call golds hold a call written this way.
    chat = (
        "USER: What is my loan payment for $50000 at 5%?\n\n\n"
        "ASSISTANT: Sure, let me calculate.\nAI to=calculate_loan_payment: "
        '{"loan_amount": 50000, "interest_rate": 5} <|endoftext|>\n\n\n'
    )
    row = glaive_row(chat, tool("calculate_loan_payment", loan_amount="number"))
    assert to_candidate(parse_glaive_row(row), 0).label == NONSTANDARD_CALL


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # glaive's usual form: the arguments JSON inside single quotes
        (
            '{"name": "f", "arguments": \'{"a": 1, "b": [1, 2]}\'}',
            ToolCall("f", {"a": 1, "b": [1, 2]}),
        ),
        # already valid JSON with an object
        ('{"name": "f", "arguments": {"a": {"b": null}}}', ToolCall("f", {"a": {"b": None}})),
        # valid JSON with the arguments as a JSON string
        ('{"name": "f", "arguments": "{\\"a\\": true}"}', ToolCall("f", {"a": True})),
        # arguments key first, apostrophe inside, multi-line arguments
        ('{"arguments": \'{\n  "q": "it\'s"\n}\', "name": "g"}', ToolCall("g", {"q": "it's"})),
        # an apostrophe escaped for the quote wrapper
        ('{"name": "f", "arguments": \'{"q": "it\\\'s"}\'}', ToolCall("f", {"q": "it's"})),
        # empty and absent arguments: a zero-argument call
        ('{"name": "get_poem", "arguments": \'\'}', ToolCall("get_poem", {})),
        ('{"name": "get_poem"}', ToolCall("get_poem", {})),
        # trailing text after a well-formed call
        ('{"name": "f", "arguments": {}} thanks', ToolCall("f", {})),
    ],
)
def test_call_bodies(body: str, expected: ToolCall) -> None:
    assert parse_call_body(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "f", "arguments": \'{"a": 1,}\'}',  # trailing comma inside the arguments
        '{"name": "f", "arguments": \'[1, 2]\'}',  # arguments not an object
        "{\"arguments\": '{}'}",  # no name
        '{"name": "f", "arguments": \'{"a": 1}\'',  # outer brace missing
        "not json at all",
    ],
)
def test_malformed_call_bodies_raise_bad_call_json(body: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_call_body(body)
    assert info.value.reason == "bad_call_json"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"chat": "USER: hi\n\nASSISTANT: hello"}, "missing_system"),
        ({"system": "SYSTEM: x", "chat": ""}, "missing_chat"),
        (
            glaive_row("USER: hi\n\nASSISTANT: hello", '{"name": "f", "description": '),
            "bad_tool_json",
        ),
        (glaive_row("just text, no markers"), "text_before_first_turn"),
        (glaive_row("ASSISTANT: Hello, how can I help?"), "no_user_turn"),
        (glaive_row("USER: anyone there?"), "no_assistant_reply"),
        (glaive_row("USER:   \n\nASSISTANT: hello"), "empty_query"),
        (
            glaive_row(
                'USER: go\n\n\nASSISTANT: <functioncall> {"name": "f", "arguments": \'{oops}\'}',
                tool("f"),
            ),
            "bad_call_json",
        ),
    ],
)
def test_unparseable_rows_raise_with_their_reason(row: dict, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        to_candidate(parse_glaive_row(row), 0)
    assert info.value.reason == reason


def test_split_turns_strips_end_of_text_and_keeps_inner_newlines() -> None:
    turns = split_turns("USER: a\nb\n\n\nASSISTANT: c <|endoftext|>\n\n\nFUNCTION RESPONSE: {}\n")
    assert [(t.role, t.content) for t in turns] == [
        (USER, "a\nb"),
        (ASSISTANT, "c"),
        (FUNCTION_RESPONSE, "{}"),
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    name=st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True),
    arguments=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    ensure_ascii=st.booleans(),
)
def test_glaive_quoted_arguments_round_trip(name: str, arguments: dict, ensure_ascii: bool) -> None:
    # glaive's form: the JSON arguments, unescaped, between single quotes (apostrophes, unicode
    # and nesting included).
    quoted = json.dumps(arguments, ensure_ascii=ensure_ascii)
    body = f'{{"name": "{name}", "arguments": \'{quoted}\'}}'
    assert parse_call_body(body) == ToolCall(name, arguments)


def test_rows_with_the_same_tool_text_share_one_parsed_list() -> None:
    # Memory at 113k rows depends on this; nothing downstream mutates tools.
    rows = sample_rows()
    first, second = (parse_glaive_row(dict(rows[10])) for _ in range(2))
    assert first.tools is second.tools and first.tool_text is second.tool_text
