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

import jsonschema
import numpy as np
import openai
import pytest
import uvicorn
from click.testing import CliRunner
from lora_helpers import make_random_adapter

from commands import serve
from commands.serve import create_app
from data.call_format import (
    BEGIN_TOOL_REQUESTS,
    END_TOOL_REQUESTS,
    JSON,
    PLAMO,
    call_text,
    markup_text,
    parse_markup,
)
from data.prompt import build_system_prompt, render_tools
from mlx_plamo3.batching import DecodeLoop
from mlx_plamo3.generate import CANCELLED, stop_token_ids
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

    def __call__(self, request):
        self.prompts.append(request.prompt_ids)
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


class FeedingStub(StubGenerator):
    """A stub that hands its reply to the server token by token, as the decode loop does."""

    def __call__(self, request):
        super().__call__(request)
        for token in self.ids:
            if request.on_token(token):
                break
        return self.ids


def streamed_calls(chunks) -> list[dict]:
    """The tool calls a stream's deltas add up to, checking OpenAI's delta layout: a call's
    first delta has its index, id, type, name and empty arguments; later ones only add text."""
    calls: list[dict] = []
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.index == len(calls):
                assert delta.id.startswith("call_") and delta.type == "function"
                assert delta.function.name and delta.function.arguments == ""
                calls.append({"name": delta.function.name, "arguments": "", "fragments": 0})
            else:
                assert delta.index == len(calls) - 1 and delta.id is None
                assert delta.function.name is None
                calls[-1]["arguments"] += delta.function.arguments
                calls[-1]["fragments"] += 1
    return calls


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


def test_a_streamed_call_arrives_as_tool_call_deltas(stub_server):
    client, _stub = stub_server
    chunks = list(ask(client, tools=[WEATHER_TOOL], stream=True, max_tokens=100))
    (call,) = streamed_calls(chunks)
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Osaka"})
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


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
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "extra_body": {"constrain": "yes"}}, "constrain"),
        ({"extra_body": {"constrain": 1}}, "constrain"),
        ({"extra_body": {"stream": "yes"}}, "stream"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools"),
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
    def __call__(self, request):
        time.sleep(1.0)
        return super().__call__(request)


def test_a_full_queue_answers_503_and_a_huge_body_413(tiny):
    model, tokenizer = tiny
    stub = SlowStub(tokenizer, "fine")
    app = create_app(
        model,
        tokenizer,
        MODEL_NAME,
        generate_text=stub,
        max_batch=1,
        max_queue=0,
        max_request_bytes=4096,
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


# ---- tool calls streamed as deltas -------------------------------------------------------------

TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "description": "Local time.", "parameters": {}},
}


@pytest.mark.parametrize(
    ("reply", "expected_calls"),
    [
        (WEATHER_CALL, [("get_weather", '{"city": "Osaka"}')]),
        (  # several calls in a list; text after the call JSON is not part of the reply
            '[{"name": "get_weather", "arguments": {"city": "Kyoto, \\"old\\" {town}"}}, '
            '{"name": "get_time", "arguments": {}}] done',
            [("get_weather", '{"city": "Kyoto, \\"old\\" {town}"}'), ("get_time", "{}")],
        ),
        (  # arguments before the name: decided when the reply ends, sent whole
            '{"arguments": {"city": "Nara"}, "name": "get_weather"}',
            [("get_weather", '{"city": "Nara"}')],
        ),
        ('{"name": "book_flight", "arguments": {}}', None),  # not an offered tool: content
        ('{"name": "get_\\x", "arguments": {}}', None),  # a name that is not valid JSON
        ("Osaka is sunny {today}.", None),
        ("  [not json", None),
    ],
)
def test_streamed_deltas_add_up_to_the_non_streamed_reply(tiny, reply, expected_calls):
    check_deltas(tiny, reply, expected_calls, JSON)


def check_deltas(tiny, reply: str, expected_calls, call_format: str) -> None:
    """Serve `reply` (fed token by token) in `call_format`, non-streamed and streamed: the
    streamed deltas add up to the non-streamed message, which holds `expected_calls` (name,
    arguments text), or, when None, the reply as content."""
    model, tokenizer = tiny
    stub = FeedingStub(tokenizer, reply)
    assert tokenizer.decode(stub.ids) == reply
    app = create_app(model, tokenizer, MODEL_NAME, generate_text=stub, call_format=call_format)
    with serving(app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        request = {"tools": [WEATHER_TOOL, TIME_TOOL], "max_tokens": 1000}
        whole = ask(client, **request).choices[0]
        chunks = list(ask(client, **request, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = streamed_calls(chunks)
    if expected_calls is None:
        assert (whole.message.content, whole.message.tool_calls) == (reply, None)
        assert (content, calls, whole.finish_reason) == (reply, [], "stop")
        content_deltas = [c for c in chunks if c.choices and c.choices[0].delta.content]
        if not reply.lstrip().startswith(("{", "[", "<|")):  # plain text is streamed, not held
            assert len(content_deltas) > 1
        return
    assert whole.message.content is None and content == ""
    assert whole.finish_reason == chunks[-1].choices[0].finish_reason == "tool_calls"
    non_streamed = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert non_streamed == [(c["name"], c["arguments"]) for c in calls] == expected_calls
    if reply.startswith(('{"name', "[", BEGIN_TOOL_REQUESTS)):  # decided early: in fragments
        assert all(call["fragments"] > 1 for call in calls if call["arguments"] != "{}")


def test_a_call_cut_short_by_max_tokens_stays_a_call(tiny):
    model, tokenizer = tiny
    stub = FeedingStub(tokenizer, WEATHER_CALL)
    cut = 14  # tokens: past the arguments' opening brace, before the call's end
    partial = tokenizer.decode(stub.ids[:cut])
    assert '"arguments": {' in partial and not partial.endswith("}}")
    stub.ids = stub.ids[:cut]  # what a generator stopped by max_tokens returns
    with serving(create_app(model, tokenizer, MODEL_NAME, generate_text=stub)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        whole = ask(client, tools=[WEATHER_TOOL], max_tokens=cut).choices[0]
        chunks = list(ask(client, tools=[WEATHER_TOOL], max_tokens=cut, stream=True))
    (call,) = whole.message.tool_calls
    assert whole.finish_reason == chunks[-1].choices[0].finish_reason == "length"
    assert call.function.arguments == partial[partial.index('"arguments": ') + 13 :]
    assert streamed_calls(chunks)[0]["arguments"] == call.function.arguments


# ---- concurrency: the shared decode loop ------------------------------------------------------


class RecordingLoop(DecodeLoop):
    """The server's decode loop, recording how many rows each step decoded and every finished
    row; while `gathering` is n, its next admission first waits until n requests have come."""

    def __init__(self, *args, **kwargs):
        self.batch_sizes: list[int] = []
        self.finished: list = []
        self.gathering = 0
        super().__init__(*args, **kwargs)
        step, admit = self.decoder.step, self.decoder.admit

        def recording_step():
            self.batch_sizes.append(len(self.decoder.rows))
            rows = step()
            self.finished += rows
            return rows

        def gathering_admit(rows):
            deadline = time.monotonic() + 30
            while len(rows) + len(self.waiting) < self.gathering:
                assert time.monotonic() < deadline, "the requests did not all come"
                time.sleep(0.005)
            self.gathering = 0
            admit(rows)

        self.decoder.step, self.decoder.admit = recording_step, gathering_admit


@contextmanager
def loop_server(tiny, max_batch: int, max_queue: int = 8):
    model, tokenizer = tiny
    loop = RecordingLoop(model, stop_token_ids(tokenizer), tokenizer.pad_token_id, max_batch)
    app = create_app(
        model,
        tokenizer,
        MODEL_NAME,
        generate_text=loop.generate,
        max_batch=max_batch,
        max_queue=max_queue,
    )
    with serving(app) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0), loop
    loop.close()


QUESTIONS = [
    ("Hello", 9),
    ("What is the weather in Osaka?", 4),
    ("Tell me a story about a cat.", 16),
    ("1 2 3 4 5 6 7 8 9", 7),
    ("Translate: good morning", 12),
    ("Why?", 5),
]


def one_reply(client, question: str, max_tokens: int, stream: bool) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of one greedy request."""
    messages = [{"role": "user", "content": question}]
    if not stream:
        reply = ask(client, messages=messages, max_tokens=max_tokens)
        choice = reply.choices[0]
        return choice.message.content, choice.finish_reason, reply.usage.completion_tokens
    chunks = list(
        ask(
            client,
            messages=messages,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    return text, finish, chunks[-1].usage.completion_tokens


def test_concurrent_clients_get_what_they_get_alone(tiny):
    # Four rows start (or one, three joining it at the next step); the last two join mid-batch
    # as the shorter ones leave.
    with loop_server(tiny, max_batch=4) as (client, loop):
        alone = [one_reply(client, q, n, stream=False) for q, n in QUESTIONS]
        assert set(loop.batch_sizes) == {1}
        assert len(set(alone)) == len(alone), "replies do not depend on the prompt"
        loop.batch_sizes.clear()
        together: dict[int, tuple] = {}

        def client_thread(index: int) -> None:
            question, max_tokens = QUESTIONS[index]
            together[index] = one_reply(client, question, max_tokens, stream=index % 2 == 1)

        threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(6)]
        loop.gathering = 6  # the first rows are admitted once all six requests have come
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert [together[i] for i in range(6)] == alone
    assert max(loop.batch_sizes) == 4
    assert len(loop.batch_sizes) < sum(tokens for _, _, tokens in alone)  # steps were shared


def test_a_client_leaving_mid_stream_frees_its_row_and_slot(tiny):
    # One row and one queue place: a long stream decodes, a second request waits behind it,
    # a third is refused. When the stream's client leaves, its row ends at once and the waiting
    # request is served; a second round finds both places free again.
    with loop_server(tiny, max_batch=1, max_queue=1) as (client, loop):
        alone = one_reply(client, "Hello", 9, stream=False)
        for round_ in (1, 2):
            stream = ask(
                client,
                messages=[{"role": "user", "content": f"Count forever, round {round_}."}],
                max_tokens=4000,
                stream=True,
            )
            chunks = iter(stream)
            next(chunks), next(chunks)  # the role, then the first text: the row decodes
            waiting: list[tuple] = []
            thread = threading.Thread(
                target=lambda served=waiting: served.append(one_reply(client, "Hello", 9, False))
            )
            thread.start()
            deadline = time.monotonic() + 30
            while not loop.waiting:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.005)
            with pytest.raises(openai.APIStatusError) as busy:
                one_reply(client, "Why?", 5, stream=False)
            assert busy.value.status_code == 503 and "--max-batch + --max-queue" in str(busy.value)
            stream.close()
            thread.join(timeout=60)
            assert waiting == [alone]
            left = [row for row in loop.finished if row.finish_reason == CANCELLED]
            assert len(left) == round_ and 0 < len(left[-1].tokens) < 4000


def test_a_non_streamed_client_leaving_frees_its_row_and_slot(tiny):
    # One row, no queue: a long non-streamed request decodes; its client gives up (a timeout),
    # its row ends within the poll interval, and the next request is admitted and served.
    with loop_server(tiny, max_batch=1, max_queue=0) as (client, loop):
        alone = one_reply(client, "Hello", 9, stream=False)
        impatient = client.with_options(timeout=1.5)
        with pytest.raises(openai.APITimeoutError):
            ask(
                impatient,
                messages=[{"role": "user", "content": "Count forever."}],
                max_tokens=4000,
            )
        deadline = time.monotonic() + 30
        while not [row for row in loop.finished if row.finish_reason == CANCELLED]:
            assert time.monotonic() < deadline, "the abandoned row never ended"
            time.sleep(0.01)
        left = next(row for row in loop.finished if row.finish_reason == CANCELLED)
        assert 0 < len(left.tokens) < 4000
        assert one_reply(client, "Hello", 9, stream=False) == alone


# ---- constrained decoding -----------------------------------------------------------------------

# Bounded strings: a random model under a grammar closes an unbounded string only by chance.
BOUNDED_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}},
            "required": ["city"],
        },
    },
}
BOOKING_TOOL = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a restaurant table.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "people": {"type": "integer", "minimum": 1, "maximum": 12},
                "meal": {"type": "string", "enum": ["lunch", "dinner"]},
            },
            "required": ["city", "people"],
        },
    },
}
CONSTRAINED_TOOLS = [BOUNDED_WEATHER_TOOL, BOOKING_TOOL]
BOOK_TABLE = {"type": "function", "function": {"name": "book_table"}}


def valid_call_names(tool_calls) -> list[str]:
    """The names of a message's tool calls, each call's arguments checked against its tool's
    schema by jsonschema (independent of the grammar)."""
    schemas = {
        tool["function"]["name"]: tool["function"]["parameters"] for tool in CONSTRAINED_TOOLS
    }
    for call in tool_calls:
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    return [call.function.name for call in tool_calls]


def test_required_and_a_named_tool_choice_force_schema_valid_calls(client):
    tools = CONSTRAINED_TOOLS
    free = ask(client, tools=tools, max_tokens=40).choices[0]
    assert free.message.tool_calls is None  # the random model writes no call by itself
    required = ask(client, tools=tools, tool_choice="required", max_tokens=2000).choices[0]
    assert (required.finish_reason, required.message.content) == ("tool_calls", None)
    assert valid_call_names(required.message.tool_calls)
    whole = ask(client, tools=tools, tool_choice=BOOK_TABLE, max_tokens=300).choices[0]
    assert whole.finish_reason == "tool_calls"
    assert valid_call_names(whole.message.tool_calls) == ["book_table"]
    chunks = list(ask(client, tools=tools, tool_choice=BOOK_TABLE, max_tokens=300, stream=True))
    non_streamed = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert [(c["name"], c["arguments"]) for c in streamed_calls(chunks)] == non_streamed
    # auto under the grammar: free text stays what the model writes unconstrained
    constrained = ask(client, tools=tools, max_tokens=40, extra_body={"constrain": True})
    assert constrained.choices[0].message.content == free.message.content


class RecordingStub(StubGenerator):
    """A stub that keeps each request's constraint."""

    def __init__(self, tokenizer, reply: str):
        super().__init__(tokenizer, reply)
        self.constraints: list = []

    def __call__(self, request):
        self.constraints.append(request.constraint)
        return super().__call__(request)


def test_constrain_flag_and_request_field_choose_the_constrained_requests(tiny):
    model, tokenizer = tiny
    tools = {"tools": [WEATHER_TOOL]}
    cases = [  # (request, constrained with --constrain off, with it on)
        (tools, False, True),
        ({**tools, "extra_body": {"constrain": True}}, True, True),
        ({**tools, "extra_body": {"constrain": False}}, False, False),
        ({**tools, "tool_choice": "required", "extra_body": {"constrain": False}}, True, True),
        (
            {**tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            True,
            True,
        ),
        ({**tools, "tool_choice": "none", "extra_body": {"constrain": True}}, False, False),
        ({"extra_body": {"constrain": True}}, False, False),  # no tools: nothing to constrain
    ]
    call_ids = tokenizer.encode(WEATHER_CALL, add_special_tokens=False)
    hello = tokenizer.encode("hello", add_special_tokens=False)[0]
    for flag in (False, True):
        stub = RecordingStub(tokenizer, "fine")
        app = create_app(model, tokenizer, MODEL_NAME, generate_text=stub, constrain=flag)
        with serving(app) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            for request, *_ in cases:
                assert ask(client, **request).choices[0].message.content == "fine"
        assert [c is not None for c in stub.constraints] == [case[1 + flag] for case in cases]
        for (request, *_), constraint in zip(cases, stub.constraints, strict=True):
            if constraint is None:
                continue
            # the request's own tool grammar: free text may start only in auto
            assert constraint.allowed()[hello] == ("tool_choice" not in request)
            for token in call_ids:
                constraint.accept(token)
            assert set(np.flatnonzero(constraint.allowed())) == stop_token_ids(tokenizer)


# ---- the adapter's call format: PLaMo's markup ------------------------------------------------


@pytest.fixture(scope="module")
def plamo_adapter(tiny_mlx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("plamo-adapter") / "adapter"
    make_random_adapter(tiny_mlx_dir, out, metadata={"call_format": PLAMO})
    return out


def test_serve_reads_the_adapters_call_format_and_constrains_in_it(
    tiny_mlx_dir, plamo_adapter, monkeypatch
):
    apps = []
    monkeypatch.setattr(serve.uvicorn, "run", lambda app, **_: apps.append(app))
    port = ["--port", str(free_port())]  # uvicorn.run is stubbed; the port is only checked
    args = ["--model", str(tiny_mlx_dir), "--adapter", str(plamo_adapter), *port]
    result = CliRunner().invoke(serve.serve_command, args)
    assert result.exit_code == 0, result.output
    assert "tool calls: plamo format" in result.output
    result = CliRunner().invoke(serve.serve_command, ["--model", str(tiny_mlx_dir), *port])
    assert "tool calls: json format" in result.output
    with serving(apps[0]) as url:  # the adapter's app, decoding with the real loop
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        request = {"model": serve.served_name(str(tiny_mlx_dir)), "tools": CONSTRAINED_TOOLS}
        choice = ask(client, **request, tool_choice=BOOK_TABLE, max_tokens=400).choices[0]
    # the markup reader made these calls: in this format a JSON reply would be content
    assert choice.finish_reason == "tool_calls"
    assert valid_call_names(choice.message.tool_calls) == ["book_table"]


def test_plamo_history_is_rendered_in_markup(tiny):
    model, tokenizer = tiny
    stub = StubGenerator(tokenizer, "fine")
    calls = [("get_weather", {"city": "Osaka"}), ("get_time", {})]
    tool_calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
        for i, (n, a) in enumerate(calls)
    ]
    messages = [
        {"role": "user", "content": "Weather and time in Osaka?"},
        {"role": "assistant", "content": None, "tool_calls": tool_calls},
        {"role": "tool", "tool_call_id": "call_0", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    ]
    app = create_app(model, tokenizer, MODEL_NAME, generate_text=stub, call_format=PLAMO)
    with serving(app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        ask(client, messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])
    system = build_system_prompt(render_tools([WEATHER_TOOL["function"], TIME_TOOL["function"]]))
    history = tokenizer.decode(stub.prompts[-1])
    assert parse_markup(history) == [{"name": n, "arguments": a} for n, a in calls]
    assert history == tokenizer.apply_chat_template(
        [
            {"role": "system", "content": system},
            messages[0],
            {"role": "assistant", "content": markup_text(calls)},
            {"role": "tool", "content": "Sunny"},
            {"role": "tool", "content": "12:00"},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )


TWO_MARKUP_CALLS = markup_text([("get_weather", {"city": "<Kyoto> {old}"}), ("get_time", {})])


@pytest.mark.parametrize(
    ("reply", "expected_calls"),
    [
        (markup_text([("get_weather", {"city": "Osaka"})]), [("get_weather", '{"city": "Osaka"}')]),
        (  # '<' in an argument is written escaped; what follows the markup is dropped
            TWO_MARKUP_CALLS + " done",
            [("get_weather", '{"city": "\\u003cKyoto> {old}"}'), ("get_time", "{}")],
        ),
        (  # cut before the closing tag: still the calls so far
            TWO_MARKUP_CALLS[: -len(END_TOOL_REQUESTS)],
            [("get_weather", '{"city": "\\u003cKyoto> {old}"}'), ("get_time", "{}")],
        ),
        (  # whitespace between tags and no constrain/msg prefix, as parse_markup reads them
            TWO_MARKUP_CALLS.replace("<|plamo:constrain|>json<|plamo:msg|>", "")
            .replace("><", ">\n<")
            .replace("get_time", " get_time "),
            [("get_weather", '{"city": "\\u003cKyoto> {old}"}'), ("get_time", "{}")],
        ),
        (markup_text([("book_flight", {})]), None),  # not an offered tool: content
        ("<b>Osaka</b> is sunny today.", None),  # held only while it may open the markup
        (WEATHER_CALL, None),  # the JSON format is not this adapter's: content
    ],
)
def test_plamo_replies_stream_as_tool_call_deltas(tiny, reply, expected_calls):
    check_deltas(tiny, reply, expected_calls, PLAMO)
