"""LLaMA-Factory's sharegpt tool format, on its real 300-row glaive demo and edge cases."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import data
from data.labels import to_candidate
from data.prompt import render_tools
from data.schema import (
    ASSISTANT,
    CALL,
    DEFERRED_CALL,
    FUNCTION_RESPONSE,
    NO_TOOLS,
    STRICT_NOCALL,
    USER,
    ParseError,
    ToolCall,
)
from data.sharegpt import parse_sharegpt_row, parse_tools_field

DEMO = Path(data.__file__).parent / "samples" / "llamafactory_glaive_toolcall_en_demo.json"


def demo_rows() -> list[dict]:
    return json.loads(DEMO.read_text(encoding="utf-8"))


def oracle_label(row: dict) -> str:
    """The label straight from the raw turn names, independent of the parser."""
    froms = [turn["from"] for turn in row["conversations"]]
    if not json.loads(row["tools"] or "[]"):
        return NO_TOOLS
    if froms[1] == "function_call":
        return CALL
    return DEFERRED_CALL if "function_call" in froms else STRICT_NOCALL


def test_demo_labels_match_the_raw_turns_and_its_published_counts() -> None:
    rows = demo_rows()
    labels = Counter(to_candidate(parse_sharegpt_row(r), i).label for i, r in enumerate(rows))
    assert labels == Counter(oracle_label(r) for r in rows)
    # From the sample's source notes: 300 rows, 191 list tools, 153 contain a call.
    assert sum(labels.values()) == 300
    assert labels[NO_TOOLS] == 300 - 191
    assert labels[CALL] + labels[DEFERRED_CALL] == 153
    assert labels[STRICT_NOCALL] == 191 - 153


def test_demo_calls_total_211() -> None:
    calls = [
        turn.call
        for row in demo_rows()
        for turn in parse_sharegpt_row(row).turns
        if turn.call is not None
    ]
    assert len(calls) == 211


def test_first_demo_row_turns_and_call() -> None:
    conversation = parse_sharegpt_row(demo_rows()[0])
    assert [t.role for t in conversation.turns] == [
        USER,
        ASSISTANT,
        USER,
        ASSISTANT,
        FUNCTION_RESPONSE,
        ASSISTANT,
        USER,
        ASSISTANT,
    ]
    assert conversation.turns[3].call == ToolCall(
        "search_recipes", {"ingredients": ["chicken", "bell peppers", "rice"]}
    )
    assert [t["name"] for t in conversation.tools] == ["search_recipes"]
    # Tools are rendered the way glaive writes them (4-space JSON), so prompts match.
    assert conversation.tool_text == json.dumps(conversation.tools[0], indent=4)


def row(turns: list[tuple[str, str]], tools: object = "") -> dict:
    return {"conversations": [{"from": f, "value": v} for f, v in turns], "tools": tools}


WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}


def test_several_tools_render_with_glaives_separator() -> None:
    other = {"name": "get_time", "parameters": {"type": "object", "properties": {}}}
    conversation = parse_sharegpt_row(
        row([("human", "hi"), ("gpt", "hello")], json.dumps([WEATHER, other]))
    )
    assert conversation.tool_text == (
        json.dumps(WEATHER, indent=4) + "\n\n" + json.dumps(other, indent=4)
    )
    assert conversation.tool_text == render_tools([WEATHER, other])


def test_role_content_spelling_openai_tools_and_string_arguments() -> None:
    record = {
        "messages": [
            {"role": "system", "content": "ignored: the seed's prompt replaces it"},
            {"role": "user", "content": "Weather in Kyōto?"},
            {
                "role": "function_call",
                "content": json.dumps({"name": "get_weather", "arguments": '{"city": "Kyōto"}'}),
            },
            {"role": "observation", "content": '{"temp": 20}'},
            {"role": "assistant", "content": "20 degrees."},
        ],
        "tools": [{"type": "function", "function": WEATHER}],
    }
    candidate = to_candidate(parse_sharegpt_row(record), 0)
    assert candidate.label == CALL
    assert candidate.query == "Weather in Kyōto?"
    assert candidate.call == ToolCall("get_weather", {"city": "Kyōto"})
    assert candidate.tools == [WEATHER]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (row([("human", "hi"), ("gpt", "yo")], "[{not json"), "bad_tool_json"),
        (row([("human", "hi"), ("gpt", "yo")], '[{"description": "no name"}]'), "bad_tool_json"),
        (row([("human", "hi"), ("function_call", "{broken")]), "bad_call_json"),
        (
            row([("human", "hi"), ("function_call", '[{"name": "a"}, {"name": "b"}]')]),
            "parallel_calls",
        ),
        (row([("human", "hi"), ("narrator", "once upon a time")]), "unknown_role"),
        ({"conversations": [], "tools": ""}, "bad_conversations"),
        ({"conversations": [{"from": "human"}], "tools": ""}, "bad_turn"),
    ],
)
def test_bad_rows_raise_with_their_reason(record: dict, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_sharegpt_row(record)
    assert info.value.reason == reason


def test_tools_field_forms() -> None:
    assert parse_tools_field(None) == []
    assert parse_tools_field("  ") == []
    assert parse_tools_field(json.dumps(WEATHER)) == [WEATHER]
    assert parse_tools_field([WEATHER]) == [WEATHER]
