"""The two call formats (data.call_format): the markup round-trips through our renderer and
parser, hand-written text of the documented markup parses to the expected calls, every reader
of replies (study/strict scoring, the BFCL parser) reads both formats alike, the assistant mask
covers the markup and the turn's closing tag, and the turn-end stop cannot fire inside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.card import model_card
from convert.tiny_vocab import write_tiny_tokenizer
from data.call_format import (
    CALL_FORMAT_KEY,
    JSON,
    PLAMO,
    has_markup,
    markup_text,
    parse_markup,
    recorded_call_format,
    render_calls,
)
from eval.bfcl_checker import parse_calls
from eval.harness import TURN_END, cut_at_turn_end
from eval.scoring import parse_prediction, score_row
from mlx_plamo3.errors import InputError
from mlx_plamo3.tokenizer import Plamo3Tokenizer

# The documented markup, typed by hand from the issue / GUIDE.md section 7 (not rendered here).
ONE_CALL = (
    "<|plamo:begin_tool_requests:plamo|><|plamo:begin_tool_request:plamo|>"
    "<|plamo:begin_tool_name:plamo|>get_weather<|plamo:end_tool_name:plamo|>"
    "<|plamo:begin_tool_arguments:plamo|><|plamo:constrain|>json<|plamo:msg|>"
    '{"location": "Tokyo", "unit": "celsius"}'
    "<|plamo:end_tool_arguments:plamo|><|plamo:end_tool_request:plamo|>"
    "<|plamo:end_tool_requests:plamo|>"
)
TWO_CALLS = (
    "<|plamo:begin_tool_requests:plamo|>"
    "<|plamo:begin_tool_request:plamo|><|plamo:begin_tool_name:plamo|>echo"
    "<|plamo:end_tool_name:plamo|><|plamo:begin_tool_arguments:plamo|><|plamo:constrain|>json"
    '<|plamo:msg|>{"text": "hello"}<|plamo:end_tool_arguments:plamo|>'
    "<|plamo:end_tool_request:plamo|>"
    "<|plamo:begin_tool_request:plamo|><|plamo:begin_tool_name:plamo|>sum"
    "<|plamo:end_tool_name:plamo|><|plamo:begin_tool_arguments:plamo|><|plamo:constrain|>json"
    '<|plamo:msg|>{"a": 1, "b": 2}<|plamo:end_tool_arguments:plamo|>'
    "<|plamo:end_tool_request:plamo|>"
    "<|plamo:end_tool_requests:plamo|>"
)
WEATHER = {"name": "get_weather", "arguments": {"location": "Tokyo", "unit": "celsius"}}

ARGUMENT_CASES = [
    {"location": "Tokyo"},
    {},
    {"filters": {"price": {"max": 20.5, "currency": "€"}, "tags": ["a", {"b": None}]}},
    {"text": "東京の天気は？ — café", "emoji": "🌧"},
    {"tricky": "a <| b }} {{ c |> <|plamo:tag|> <|plamo:end_tool_arguments:plamo|>"},
    {"quote": 'he said "}" and \\ left', "n": [1, 2.5, True, False]},
]


@pytest.mark.parametrize("arguments", ARGUMENT_CASES)
def test_one_call_round_trips(arguments: dict) -> None:
    text = render_calls([("do_it", arguments)], PLAMO)
    assert parse_markup(text) == [{"name": "do_it", "arguments": arguments}]


def test_several_calls_round_trip_in_order() -> None:
    calls = [(f"tool_{i}", arguments) for i, arguments in enumerate(ARGUMENT_CASES)]
    text = markup_text(calls)
    assert text.count("<|plamo:begin_tool_requests:plamo|>") == 1
    assert text.count("<|plamo:begin_tool_request:plamo|>") == len(calls)
    assert parse_markup(text) == [{"name": n, "arguments": a} for n, a in calls]


def test_markup_text_is_the_documented_layout() -> None:
    assert markup_text([("get_weather", WEATHER["arguments"])]) == ONE_CALL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ONE_CALL, [WEATHER]),
        (
            TWO_CALLS,
            [
                {"name": "echo", "arguments": {"text": "hello"}},
                {"name": "sum", "arguments": {"a": 1, "b": 2}},
            ],
        ),
        # text before the block is content; the turn's own end tag may follow
        ("Let me check. " + ONE_CALL + TURN_END, [WEATHER]),
        # no constrain/msg prefix, and whitespace between tags, as SGLang's detector allows
        (ONE_CALL.replace("<|plamo:constrain|>json<|plamo:msg|>", ""), [WEATHER]),
        (ONE_CALL.replace("|><|", "|>\n  <|"), [WEATHER]),
        # a name with surrounding spaces is stripped
        (ONE_CALL.replace(">get_weather<", "> get_weather <"), [WEATHER]),
    ],
)
def test_hand_written_markup_parses_to_the_expected_calls(text: str, expected: list) -> None:
    assert parse_markup(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        ONE_CALL.replace("<|plamo:end_tool_requests:plamo|>", ""),  # outer block left open
        ONE_CALL.replace("<|plamo:end_tool_arguments:plamo|>", ""),
        ONE_CALL.replace("<|plamo:end_tool_request:plamo|>", ""),
        ONE_CALL.replace('"Tokyo"', "Tokyo"),  # arguments not JSON
        ONE_CALL.replace("get_weather", " "),  # no name
        ONE_CALL.split("<|plamo:begin_tool_arguments:plamo|>")[0],  # cut by the token budget
        "<|plamo:begin_tool_requests:plamo|><|plamo:end_tool_requests:plamo|>",  # no call
        '{"name": "get_weather", "arguments": {}}',  # not markup at all
    ],
)
def test_broken_markup_gives_no_calls(text: str) -> None:
    assert parse_markup(text) is None


@pytest.mark.parametrize(
    "calls",
    [[("get_weather", {"location": "Tokyo"})], [("a", {"x": [1]}), ("b", {"y": {"z": "é"}})]],
)
def test_every_reader_gets_the_same_calls_from_both_formats(calls: list) -> None:
    json_reply, markup_reply = render_calls(calls, JSON), render_calls(calls, PLAMO)
    assert not has_markup(json_reply) and has_markup(markup_reply)
    assert parse_prediction(markup_reply) == parse_prediction(json_reply)
    assert parse_calls(markup_reply) == parse_calls(json_reply)
    assert parse_calls(markup_reply) == [{"name": n, "arguments": a} for n, a in calls]


@pytest.mark.parametrize("mode", ["study", "strict"])
def test_scoring_gives_a_markup_reply_the_json_replys_verdict(mode: str) -> None:
    gold = json.dumps(WEATHER)
    tools = [{"name": "get_weather"}]
    for name, arguments, kind in [
        ("get_weather", WEATHER["arguments"], "call"),
        ("get_weather", {"location": "Osaka"}, "call"),
        ("get_forecast", {}, "call"),
        ("get_weather", {}, "nocall"),
    ]:
        json_verdict, markup_verdict = (
            score_row({"kind": kind, "gold": gold, "pred": pred, "tools": tools}, mode)
            for pred in (render_calls([(name, arguments)], fmt) for fmt in (JSON, PLAMO))
        )
        assert markup_verdict == json_verdict
    broken = score_row({"kind": "call", "gold": gold, "pred": ONE_CALL[:-10], "tools": tools}, mode)
    assert (broken.parsed, broken.reason) == (False, "no_parse")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Plamo3Tokenizer:
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    write_tiny_tokenizer(path)
    return Plamo3Tokenizer.from_pretrained(path)


def test_assistant_mask_covers_the_markup_and_the_closing_tag(tokenizer) -> None:
    call = render_calls([("get_weather", {"location": "東京 <|plamo:tag|>"})], PLAMO)
    messages = [
        {"role": "system", "content": "tools"},
        {"role": "user", "content": "Weather in Tokyo?"},
        {"role": "assistant", "content": call},
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "assistant", "content": "It is 21 degrees."},
    ]
    ids, mask = tokenizer.assistant_token_mask(messages)
    runs, current = [], []
    for token, supervised in zip(ids, mask, strict=True):
        if supervised:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    assert [tokenizer.decode(run) for run in runs] == [
        call + TURN_END,
        "It is 21 degrees." + TURN_END,
    ]
    # the closing tag is the turn end's single id, and it ends each supervised run
    tag = tokenizer.convert_tokens_to_ids(TURN_END)
    assert [run[-1] for run in runs] == [tag, tag]


def test_the_turn_end_cannot_fire_inside_the_markup(tokenizer) -> None:
    call = render_calls([("echo", {"text": "stop <|plamo:tag|> here"})], PLAMO)
    tag = tokenizer.convert_tokens_to_ids(TURN_END)
    assert tag not in tokenizer.encode(call, add_special_tokens=False)
    assert cut_at_turn_end(call + TURN_END + "junk") == call
    assert parse_markup(tokenizer.decode(tokenizer.encode(call, add_special_tokens=False))) == [
        {"name": "echo", "arguments": {"text": "stop <|plamo:tag|> here"}}
    ]


def test_recorded_call_format_defaults_to_json_and_names_a_bad_value() -> None:
    assert recorded_call_format({}, "manifest.json") == JSON
    assert recorded_call_format({CALL_FORMAT_KEY: PLAMO}, "manifest.json") == PLAMO
    with pytest.raises(InputError, match=r"manifest\.json: 'call_format'.*'xml'"):
        recorded_call_format({CALL_FORMAT_KEY: "xml"}, "manifest.json")


def test_card_of_a_plamo_adapter_says_how_to_serve_it(tmp_path: Path) -> None:
    peft = {"base_model_name_or_path": "pfnet/plamo-3-nict-2b-base", "r": 16, "lora_alpha": 32}
    peft["target_modules"] = ["qkv_proj"]
    plamo = model_card({"format": "mlx-plamo3-lora", CALL_FORMAT_KEY: PLAMO}, peft, (), "me/x")
    for flag in (
        "vllm serve pfnet/plamo-3-nict-2b-base --trust-remote-code",
        "--enable-lora --lora-modules plamo-tools=me/x --max-lora-rank 16",
        "--enable-auto-tool-choice --tool-call-parser plamo3",
        "python -m sglang.launch_server --model-path pfnet/plamo-3-nict-2b-base",
        "--enable-lora --lora-paths plamo-tools=me/x",
        "pfnet-research/vllm-plamo3-plugin",
    ):
        assert flag in plamo
    assert "- `call_format`: plamo" in plamo
    json_card = model_card({"format": "mlx-plamo3-lora"}, peft, (), "me/x")
    assert "--tool-call-parser" not in json_card
    assert '{"name": ..., "arguments": {...}}' in json_card
