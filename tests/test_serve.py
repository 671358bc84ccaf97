"""`mlx-plamo serve` through the official openai client: the tiny model served in-process by
uvicorn on 127.0.0.1, plus apps whose generation is a stub, for the tool-call paths a random
model will not take by itself."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest
import uvicorn

from commands.serve import create_app
from data.prompt import build_system_prompt, call_text, render_tools
from mlx_plamo3.loading import load

MODEL_NAME = "tiny-plamo"
API_KEY = "test-key"
WEATHER_CALL = '{"name": "get_weather", "arguments": {"city": "Osaka"}}'
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` on a free local port for the with-block; yields its /v1 base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def tiny(tiny_mlx_dir):
    return load(tiny_mlx_dir)


class StubGenerator:
    """Generation that returns fixed text's ids and keeps the prompts it was given."""

    def __init__(self, tokenizer, reply: str):
        self.ids = tokenizer.encode(reply, add_special_tokens=False)
        self.prompts: list[list[int]] = []

    def __call__(self, prompt_ids, _sampling, _on_token):
        self.prompts.append(prompt_ids)
        return self.ids


@pytest.fixture(scope="module")
def client(tiny):
    model, tokenizer = tiny
    with serving(create_app(model, tokenizer, MODEL_NAME)) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def stub_server(tiny):
    model, tokenizer = tiny
    stub = StubGenerator(tokenizer, WEATHER_CALL)
    app = create_app(model, tokenizer, MODEL_NAME, api_key=API_KEY, generate_text=stub)
    with serving(app) as url:
        yield openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0), stub


def ask(client, **overrides):
    request = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    return client.chat.completions.create(**{**request, **overrides})


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [(m.id, m.object, m.owned_by) for m in models] == [(MODEL_NAME, "model", "mlx-plamo3")]


def test_plain_chat_returns_text_and_usage(client):
    reply = ask(client)
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.message.tool_calls is None
    assert choice.finish_reason in {"stop", "length"}
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_matches_the_greedy_reply(client):
    whole = ask(client).choices[0].message.content
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in {"stop", "length"} and not any(finishes[:-1])
    assert chunks[-1].usage.completion_tokens > 0


def test_stop_string_cuts_the_reply(tiny):
    model, tokenizer = tiny
    stub = StubGenerator(tokenizer, "one two three")
    with serving(create_app(model, tokenizer, MODEL_NAME, generate_text=stub)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        choice = ask(client, stop=[" three", "zzz"], max_tokens=20).choices[0]
        streamed = "".join(
            c.choices[0].delta.content or "" for c in ask(client, stop=" two", stream=True)
        )
    assert (choice.message.content, choice.finish_reason) == ("one two", "stop")
    assert streamed == "one"


def test_a_call_to_an_offered_tool_is_returned_as_tool_calls(stub_server):
    client, _stub = stub_server
    choice = ask(client, tools=[WEATHER_TOOL]).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Osaka"}


def test_a_streamed_call_arrives_as_a_tool_calls_delta(stub_server):
    client, _stub = stub_server
    chunks = list(ask(client, tools=[WEATHER_TOOL], stream=True))
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert [(call.function.name, json.loads(call.function.arguments)) for call in calls] == [
        ("get_weather", {"city": "Osaka"})
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_with_tool_choice_none_tools_are_not_offered(stub_server, tiny):
    client, stub = stub_server
    _model, tokenizer = tiny
    choice = ask(client, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=100).choices[0]
    assert len(stub.ids) < 100
    assert (choice.message.content, choice.finish_reason) == (WEATHER_CALL, "stop")
    assert "get_weather" not in tokenizer.decode(stub.prompts[-1])


def test_a_tool_result_round_trip_is_rendered_as_the_study_wrote_it(stub_server, tiny):
    client, stub = stub_server
    _model, tokenizer = tiny
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Weather in Osaka?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Osaka"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 25C"},
    ]
    ask(client, messages=messages, tools=[WEATHER_TOOL])
    system = build_system_prompt(render_tools([WEATHER_TOOL["function"]]))
    expected = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": system + "\n\nAnswer briefly."},
            {"role": "user", "content": "Weather in Osaka?"},
            {"role": "assistant", "content": call_text("get_weather", {"city": "Osaka"})},
            {"role": "tool", "content": "Sunny, 25C"},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert tokenizer.decode(stub.prompts[-1]) == expected


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"model": "other-model"}, "model"),
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "book_flight"}},
            },
            "tool_choice",
        ),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ],
)
def test_bad_requests_are_400_naming_the_param(stub_server, overrides, param):
    client, _stub = stub_server
    with pytest.raises(openai.BadRequestError) as raised:
        ask(client, **overrides)
    error = raised.value.body
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_a_wrong_api_key_is_401(stub_server):
    client, _stub = stub_server
    with pytest.raises(openai.AuthenticationError):
        ask(client.with_options(api_key="wrong-key"))
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong-key").models.list()


class SlowStub(StubGenerator):
    def __call__(self, prompt_ids, sampling, on_token):
        time.sleep(1.0)
        return super().__call__(prompt_ids, sampling, on_token)


def test_a_full_queue_answers_503_and_a_huge_body_413(tiny):
    model, tokenizer = tiny
    stub = SlowStub(tokenizer, "fine")
    app = create_app(
        model, tokenizer, MODEL_NAME, generate_text=stub, max_queue=0, max_request_bytes=4096
    )
    with serving(app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        outcomes: list[object] = []

        def one() -> None:
            try:
                outcomes.append(ask(client, max_tokens=4).choices[0].message.content)
            except openai.APIStatusError as exc:
                outcomes.append(exc.status_code)

        threads = [threading.Thread(target=one) for _ in range(2)]
        for thread in threads:
            thread.start()
            time.sleep(0.2)  # the first is generating when the second arrives
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(map(str, outcomes)) == ["503", "fine"]
        assert ask(client, max_tokens=4).choices[0].message.content == "fine"  # slot freed
        with pytest.raises(openai.APIStatusError) as error:
            ask(client, messages=[{"role": "user", "content": "x" * 5000}])
        assert error.value.status_code == 413 and "--max-request-bytes" in str(error.value)
