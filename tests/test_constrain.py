"""Schema-constrained tool calls on the tiny random model, which never writes a call by itself:
constrained replies parse as calls to an offered tool whose arguments an independent validator
(jsonschema) accepts, in both call formats (the study's JSON, and PLaMo's markup read back by
data.call_format.parse_markup); free text and unconstrained rows are untouched; the eval records
it and constrains in the adapter's format."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from lora_helpers import make_random_adapter

from commands.main import main as cli_main
from data.call_format import BEGIN_TOOL_REQUESTS, PLAMO, call_text, markup_text, parse_markup
from data.prompt import example_row, render_tools
from eval import harness
from eval.constrain import (
    ConstraintError,
    constraint_factory,
    tool_call_constraint,
)
from mlx_plamo3.errors import InputError
from mlx_plamo3.generate import SamplingConfig, generate, stop_token_ids
from mlx_plamo3.loading import load

# Strings and arrays are bounded: a random model under a grammar writes valid JSON, but it
# closes an unbounded string only by chance, and the budget below must hold whole replies (a
# greedy random model may repeat a call up to the grammar's MAX_CALLS).
NAME = {"type": "string", "maxLength": 10}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {
                "location": NAME,
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
    {
        "name": "book_flight",
        "description": "Book a flight",
        "parameters": {
            "type": "object",
            "properties": {
                "passenger": {
                    "type": "object",
                    "properties": {
                        "name": NAME,
                        "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    },
                    "required": ["name", "age"],
                },
                "legs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"from": NAME, "to": NAME},
                        "required": ["from", "to"],
                    },
                    "minItems": 1,
                    "maxItems": 3,
                },
                "cabin": {"type": "string", "enum": ["economy", "business"]},
                "refundable": {"type": "boolean"},
            },
            "required": ["passenger", "legs"],
        },
    },
    {"name": "ping", "description": "No arguments", "parameters": {}},
]
QUESTIONS = ["Weather in Tokyo?", "Book me a flight to Osaka", "hello", "ping the server"]
MAX_NEW_TOKENS = 1024


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_mlx_dir):
    return load(tiny_mlx_dir)


def prompts_of(tokenizer, questions=QUESTIONS):
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        for q in questions
    ]


def calls_in(text: str, call_format: str = "json") -> list[dict]:
    """The calls of a reply, checked against TOOLS independently of the grammar."""
    if call_format == PLAMO:
        calls = parse_markup(text)
        assert calls is not None and text.startswith(BEGIN_TOOL_REQUESTS), text
    else:
        value = json.loads(text)
        calls = value if isinstance(value, list) else [value]
    assert calls and all(set(call) == {"name", "arguments"} for call in calls), text
    schemas = {tool["name"]: tool["parameters"] or {"type": "object"} for tool in TOOLS}
    for call in calls:
        assert call["name"] in schemas, text
        jsonschema.validate(call["arguments"], schemas[call["name"]])
    return calls


def decode_constrained(
    model, tokenizer, mode, temperature, seed, questions=QUESTIONS, call_format="json"
):
    factory = constraint_factory(tokenizer, TOOLS, mode, call_format)
    sampling = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=temperature, seed=seed)
    outputs = generate(
        model,
        prompts_of(tokenizer, questions),
        stop_token_ids(tokenizer),
        sampling,
        batch_size=len(questions),
        constraints=[factory() for _ in questions],
    )
    assert all(len(ids) < MAX_NEW_TOKENS for ids in outputs)  # every reply ended by itself
    return [tokenizer.decode(ids) for ids in outputs]


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0, 1.5])
def test_required_always_yields_valid_calls(model_and_tokenizer, temperature):
    model, tokenizer = model_and_tokenizer
    names = set()
    for seed in range(3 if temperature else 1):
        for text in decode_constrained(model, tokenizer, "required", temperature, seed):
            names |= {call["name"] for call in calls_in(text)}
    assert len(names) >= 2  # the grammar chose among the tools, not one fixed path


@pytest.mark.slow
def test_a_named_tool_choice_calls_that_tool(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    for temperature, seed in [(0.0, 0), (1.0, 1)]:
        for text in decode_constrained(model, tokenizer, "book_flight", temperature, seed):
            assert isinstance(json.loads(text), dict)  # one call, not a list
            assert [call["name"] for call in calls_in(text)] == ["book_flight"]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_auto_leaves_free_text_alone(model_and_tokenizer, temperature):
    model, tokenizer = model_and_tokenizer
    prompts, stops = prompts_of(tokenizer), stop_token_ids(tokenizer)
    sampling = SamplingConfig(max_new_tokens=24, temperature=temperature, seed=3)
    free = generate(model, prompts, stops, sampling, batch_size=4)
    assert not any(tokenizer.decode(ids).startswith(("{", "[")) for ids in free)
    factory = constraint_factory(tokenizer, TOOLS, "auto")
    constraints = [factory() for _ in prompts]
    auto = generate(model, prompts, stops, sampling, batch_size=4, constraints=constraints)
    assert auto == free


def test_rows_without_a_constraint_pick_what_they_pick_unconstrained(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts, stops = prompts_of(tokenizer), stop_token_ids(tokenizer)
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0, seed=5)
    free = generate(model, prompts, stops, sampling, batch_size=4)
    assert generate(model, prompts, stops, sampling, batch_size=4, constraints=[None] * 4) == free
    required = constraint_factory(tokenizer, TOOLS, "required")
    mixed = generate(
        model, prompts, stops, sampling, batch_size=4, constraints=[None, required(), None, None]
    )
    assert [mixed[i] for i in (0, 2, 3)] == [free[i] for i in (0, 2, 3)]
    assert mixed[1] != free[1] and tokenizer.decode(mixed[1]).startswith(("{", "["))


def allowed_ids(constraint) -> set[int]:
    return {int(i) for i in np.flatnonzero(constraint.allowed())}


def test_a_complete_call_allows_only_the_stop_tokens(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    legs = [{"from": "NRT", "to": "KIX"}]
    text = call_text("book_flight", {"passenger": {"name": "Ann", "age": 30}, "legs": legs})
    constraint = constraint_factory(tokenizer, TOOLS, "required")()
    for token in tokenizer.encode(text, add_special_tokens=False):
        assert constraint.allowed()[token], (token, text)
        constraint.accept(token)
    assert allowed_ids(constraint) == stop_token_ids(tokenizer)


def test_once_a_call_opens_only_tool_names_may_follow(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    constraint = constraint_factory(tokenizer, TOOLS, "auto")()
    first = allowed_ids(constraint)
    hello = tokenizer.encode("hello", add_special_tokens=False)[0]
    assert hello in first and stop_token_ids(tokenizer) <= first  # free text may start
    for token in tokenizer.encode('{"name": "', add_special_tokens=False):
        constraint.accept(token)
    names = [tool["name"] + '"' for tool in TOOLS]
    allowed = allowed_ids(constraint)
    assert allowed and not allowed & stop_token_ids(tokenizer)
    for token in allowed:
        piece = tokenizer.decode([token])
        assert any(n.startswith(piece) or piece.startswith(n) for n in names), piece
    with pytest.raises(ConstraintError, match="outside the tool-call grammar"):
        constraint.accept(hello)


def test_tool_choice_none_keeps_calls_out(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    constraint = tool_call_constraint(tokenizer, TOOLS, "none")
    for token in allowed_ids(constraint):
        assert not tokenizer.decode([token]).startswith(("{", "["))
    constraint.accept(tokenizer.encode("hello", add_special_tokens=False)[0])
    assert constraint.allowed() is None


def test_the_server_entry_point_reads_openai_tools_and_tool_choice(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    openai_tools = [{"type": "function", "function": tool} for tool in TOOLS]
    named = {"type": "function", "function": {"name": "ping"}}
    constraint = tool_call_constraint(tokenizer, openai_tools, named)
    for token in tokenizer.encode(call_text("ping", {}), add_special_tokens=False):
        constraint.accept(token)
    assert allowed_ids(constraint) == stop_token_ids(tokenizer)
    assert tool_call_constraint(tokenizer, [], "auto") is None
    with pytest.raises(InputError, match="'nope' is neither"):
        tool_call_constraint(
            tokenizer, openai_tools, {"type": "function", "function": {"name": "nope"}}
        )
    with pytest.raises(InputError, match="tool_choice"):
        tool_call_constraint(tokenizer, openai_tools, "sometimes")
    with pytest.raises(InputError, match=r"tools\[0\]"):
        tool_call_constraint(tokenizer, [{"description": "no name"}], "auto")


def test_odd_schemas_are_loosened_not_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    odd = {
        "name": "odd",
        "parameters": {
            "type": "dict",
            "properties": {
                "pair": {"type": "tuple", "items": {"type": "any"}},
                "when": {"type": "string", "format": "no-such-format", "maxLength": 6},
                "kind": {"type": "string", "enum": []},
            },
            "required": ["when"],
        },
    }
    factory = constraint_factory(tokenizer, [odd], "odd")
    notes = "\n".join(factory.notes)
    for part in ("odd:", "odd.properties.pair:", "odd.properties.kind: empty enum"):
        assert part in notes, notes
    outputs = generate(
        model,
        prompts_of(tokenizer, ["x"]),
        stop_token_ids(tokenizer),
        SamplingConfig(max_new_tokens=MAX_NEW_TOKENS),
        constraints=[factory()],
    )
    call = json.loads(tokenizer.decode(outputs[0]))
    assert call["name"] == "odd" and isinstance(call["arguments"]["when"], str)


def test_eval_constrain_is_recorded(tiny_mlx_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    row = example_row(
        render_tools(TOOLS), "Weather in Tokyo?", call_text("ping", {}), "call", TOOLS
    )
    (data / "eval.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    (data / "train.jsonl").write_text("")
    for extra in ([], ["--suite", "bfcl", "--per-category", "1"]):
        out = tmp_path / f"constrained{len(extra)}.json"
        args = ["eval", "--condition", "base", "--model", str(tiny_mlx_dir), "--data", str(data)]
        args += [*extra, "--limit", "2", "--max-new-tokens", "6", "--constrain", "--out", str(out)]
        result = CliRunner().invoke(cli_main, args)
        assert result.exit_code == 0, result.output
        records = json.loads(out.read_text())
        assert records["summary"]["decoding"]["constrained"] is True
        assert len(records["rows"]) == 2


# ---- PLaMo's markup ----------------------------------------------------------------------------


def test_plamo_markup_for_a_named_tool_parses_and_validates(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    for name, temperature, seed in [("get_weather", 0.0, 0), ("book_flight", 1.0, 1)]:
        texts = decode_constrained(
            model, tokenizer, name, temperature, seed, QUESTIONS[:2], call_format=PLAMO
        )
        for text in texts:
            assert [call["name"] for call in calls_in(text, PLAMO)] == [name]


@pytest.mark.slow
def test_plamo_markup_required_parses_and_validates(model_and_tokenizer):
    # Each markup tag is about twenty tiny-vocabulary tokens and a random model may go on to
    # MAX_CALLS blocks, so these replies need a larger budget.
    model, tokenizer = model_and_tokenizer
    factory = constraint_factory(tokenizer, TOOLS, "required", PLAMO)
    outputs = generate(
        model,
        prompts_of(tokenizer, QUESTIONS[:2]),
        stop_token_ids(tokenizer),
        SamplingConfig(max_new_tokens=3600, temperature=1.0, seed=4),
        batch_size=2,
        constraints=[factory(), factory()],
    )
    names = set()
    for ids in outputs:
        assert len(ids) < 3600
        names |= {call["name"] for call in calls_in(tokenizer.decode(ids), PLAMO)}
    assert len(names) >= 2


def test_plamo_markup_is_its_tokens_and_then_only_stop_tokens(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    legs = [{"from": "NRT", "to": "K<IX"}]  # '<' is written escaped in the markup
    calls = [
        ("book_flight", {"passenger": {"name": "Ann", "age": 30}, "legs": legs}),
        ("get_weather", {"location": "Tokyo"}),
    ]
    ids = tokenizer.encode(markup_text(calls), add_special_tokens=False)
    control = {tokenizer.convert_tokens_to_ids(t) for t in ("<|plamo:msg|>", "<|plamo:constrain|>")}
    assert control <= set(ids)  # the markup holds control tokens the grammar must allow
    constraint = constraint_factory(tokenizer, TOOLS, "auto", PLAMO)()
    for token in ids:
        assert constraint.allowed()[token], (token, tokenizer.decode([token]))
        constraint.accept(token)
    assert allowed_ids(constraint) == stop_token_ids(tokenizer)
    named = constraint_factory(tokenizer, TOOLS, "get_weather", PLAMO)()
    one = tokenizer.encode(markup_text(calls[1:]), add_special_tokens=False)
    for token in one:
        named.accept(token)
    assert allowed_ids(named) == stop_token_ids(tokenizer)  # exactly one block


def test_plamo_markup_allows_only_offered_names_and_schema_arguments(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    markup = markup_text([("get_weather", {"location": "Tokyo"})])
    head = markup[: markup.index("get_weather")]
    constraint = constraint_factory(tokenizer, TOOLS, "required", PLAMO)()
    for token in tokenizer.encode(head, add_special_tokens=False):
        constraint.accept(token)
    names = [tool["name"] + "<" for tool in TOOLS]
    allowed = allowed_ids(constraint)
    assert allowed and not allowed & stop_token_ids(tokenizer)
    for token in allowed:
        piece = tokenizer.decode([token])
        assert any(n.startswith(piece) or piece.startswith(n) for n in names), piece
    # past the arguments' prefix, a key the schema does not have is refused
    arguments_at = markup.index('{"location"')
    for token in tokenizer.encode(markup[len(head) : arguments_at], add_special_tokens=False):
        constraint.accept(token)
    for token in tokenizer.encode('{"', add_special_tokens=False):
        constraint.accept(token)
    with pytest.raises(ConstraintError, match="outside the tool-call grammar"):
        constraint.accept(tokenizer.encode("town", add_special_tokens=False)[0])


def test_plamo_auto_and_none_keep_free_text_free(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts, stops = prompts_of(tokenizer), stop_token_ids(tokenizer)
    sampling = SamplingConfig(max_new_tokens=24, temperature=1.0, seed=3)
    free = generate(model, prompts, stops, sampling, batch_size=4)
    factory = constraint_factory(tokenizer, TOOLS, "auto", PLAMO)
    constraints = [factory() for _ in prompts]
    assert generate(model, prompts, stops, sampling, batch_size=4, constraints=constraints) == free
    opening = tokenizer.encode(BEGIN_TOOL_REQUESTS, add_special_tokens=False)[0]
    hello = tokenizer.encode("hello", add_special_tokens=False)[0]
    none = tool_call_constraint(tokenizer, TOOLS, "none", PLAMO)
    assert none.allowed()[hello] and not none.allowed()[opening]
    json_none = tool_call_constraint(tokenizer, TOOLS, "none")
    assert json_none.allowed()[opening]  # '<' opens no call in the json format
    with pytest.raises(InputError, match="unknown call format"):
        tool_call_constraint(tokenizer, TOOLS, "auto", "yaml")


def test_eval_constrain_uses_the_adapters_call_format(tiny_mlx_dir, tmp_path, monkeypatch):
    adapter = tmp_path / "adapter"
    make_random_adapter(tiny_mlx_dir, adapter, metadata={"call_format": PLAMO})
    data = tmp_path / "data"
    data.mkdir()
    row = example_row(render_tools(TOOLS), "Weather?", call_text("ping", {}), "call", TOOLS)
    (data / "eval.jsonl").write_text(json.dumps(row) + "\n")
    (data / "train.jsonl").write_text("")
    formats = []

    def spy(tokenizer, tools, mode, call_format):
        formats.append(call_format)
        return constraint_factory(tokenizer, tools, mode, call_format)

    monkeypatch.setattr(harness, "constraint_factory", spy)
    out = tmp_path / "lora.json"
    args = ["eval", "--condition", "lora", "--adapter", str(adapter)]
    args += ["--model", str(tiny_mlx_dir), "--data", str(data), "--max-new-tokens", "4"]
    result = CliRunner().invoke(cli_main, [*args, "--constrain", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())["summary"]
    assert (summary["call_format"], summary["decoding"]["constrained"]) == (PLAMO, True)
    assert formats == [PLAMO]
