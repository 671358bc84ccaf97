"""`mlx-plamo serve`: an OpenAI-compatible chat endpoint (FastAPI + uvicorn) for PLaMo 3 and
the tool-calling LoRA, bound to 127.0.0.1 unless --host says otherwise.

Routes: `GET /v1/models` lists the one served model; `POST /v1/chat/completions` takes OpenAI's
chat body (`model`, `messages`, `tools`, `tool_choice`, `max_tokens`, `temperature`, `top_p`,
`seed`, `stop`, `stream`, `stream_options.include_usage`, and our extension `constrain`) and
answers a `chat.completion`, or with `stream` server-sent `chat.completion.chunk` events ending
in `data: [DONE]`.

Prompts are rendered exactly as the adapter was trained and evaluated: when tools are offered,
the system message is the study's `build_system_prompt(render_tools(functions))`, the request's
own system text appended after a blank line (as eval/bfcl.py's case_row does), and the
conversation goes through `tokenizer.apply_chat_template(..., add_generation_prompt=True)`.
Calls are written in the adapter's call format, which its adapter_config.json records
(`call_format`; json when it records none or no adapter is served; data/call_format.py): earlier
assistant `tool_calls` are written back in it (`render_calls`: the study's call JSON, several
as a JSON list, or PLaMo's markup) and `tool` results keep the `tool` role, which the chat
template renders; replies are read in it.

Replies: text is cut at the first `stop` string (and at `<|plamo:tag|>`, as the eval cuts).
When tools were offered, commands/reply_deltas.py decides as the text arrives whether the reply
is `tool_calls` (content null, finish_reason "tool_calls", or "length" when max_tokens cut the
call short): a reply that opens with a call to an offered tool streams as tool-call deltas (the
name first, then the arguments' JSON in fragments); other text streams as content, held back
only while it could still open a call. Streamed deltas and the non-streamed message are built
from the same deltas, so they always agree. Content ends with finish_reason "length" when
max_tokens ran out, else "stop". `temperature` defaults to 1.0 as in OpenAI's API; 0 decodes
greedily, as the eval does.

tool_choice: "none" offers no tools; "auto", "required" and a named function offer them all.
Constrained decoding (eval/constrain.py, llguidance) makes a reply that opens a call name an
offered tool and give arguments its JSON Schema accepts. "required" and a named function are
always decoded under that grammar (it is the only way to force a call: one or more calls, or
exactly one call to the named tool), with or without --constrain. "auto" is constrained when
--constrain is given or the request's `constrain` is true (a request's `constrain` overrides
the flag for "auto"; it must be a boolean); a reply that does not open a call then stays free
text. Each request gets its own constraint.

Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`: 400 for a malformed body,
an unknown model, malformed tools or messages, a tool_choice naming no listed tool, a
`constrain` that is not a boolean, a seed outside [0, 2**64-1] (what `mx.random.key` takes),
max_tokens outside [1, --max-tokens-limit] or past the context; 401 for a missing or wrong
bearer key when --api-key is set. Prompts are logged only with --log-prompts; the key never is.
The address is checked before the model loads: one that cannot be bound (a port in use) is a
one-line error naming host and port, before anything says it is serving.

Concurrency: one thread owns the model and decodes up to --max-batch requests together
(mlx_plamo3/batching.py: a request arriving mid-batch is prefilled and joins at the next step,
a finished one leaves; greedy replies equal those served alone). Up to --max-queue more wait for
a row, and a request beyond them is answered 503 at once; a body over --max-request-bytes gets
413. A request holds its place until it ends or its client leaves, whose row then leaves the
batch at the next step (a non-streamed request notices within DISCONNECT_POLL_SECONDS)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from commands.reply_deltas import ReplyDeltas, ReplyMessage
from data.call_format import DEFAULT_CALL_FORMAT, recorded_call_format, render_calls
from data.prompt import build_system_prompt, render_tools
from eval.constrain import AUTO, NONE, tool_call_constraint
from eval.harness import TURN_END
from mlx_plamo3.batching import DecodeLoop
from mlx_plamo3.chat_template import KNOWN_ROLES
from mlx_plamo3.errors import USER_ERRORS
from mlx_plamo3.generate import (
    MAX_SEED,
    DecodeRequest,
    ReplyText,
    SamplingConfig,
    TokenConstraint,
    stop_token_ids,
)
from mlx_plamo3.loading import is_hub_id, load
from mlx_plamo3.lora import load_adapter, read_adapter_config
from mlx_plamo3.messages import next_step

OWNER = "mlx-plamo3"
TOOL_CHOICE_MODES = ("none", "auto", "required")
SERVER_LOG = logging.getLogger("mlx_plamo3.serve")
# How often a waiting non-streamed request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.25

# A request -> its generated ids, stop token excluded (mlx_plamo3.batching.DecodeLoop.generate).
# A generator that calls the request's on_token for none of them (a test stub) is fed afterwards.
GenerateText = Callable[[DecodeRequest], list[int]]


class RequestError(Exception):
    """A request the server refuses, answered as OpenAI's error object."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code=None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


class Admission:
    """At most `capacity` requests inside the server at once: --max-batch decoding, the rest
    waiting for a row; one more is answered 503 at once rather than queued without bound."""

    def __init__(self, capacity: int):
        self.capacity, self.inside, self.lock = capacity, 0, threading.Lock()

    def enter(self) -> None:
        with self.lock:
            if self.inside >= self.capacity:
                raise RequestError(
                    f"the server is busy: {self.inside} requests are in and the limit is "
                    f"{self.capacity} (--max-batch + --max-queue); retry shortly",
                    status=503,
                    code="server_busy",
                )
            self.inside += 1

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1


def error_body(message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }


@dataclass
class ChatJob:
    """A validated chat request, ready to generate."""

    prompt_ids: list[int]
    sampling: SamplingConfig
    stops: list[str]
    offered_tools: set[str]
    stream: bool
    include_usage: bool
    constraint: TokenConstraint | None = None
    completion_id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ChatResult:
    message: ReplyMessage
    finish_reason: str
    completion_tokens: int

    def usage(self, prompt_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_tokens + self.completion_tokens,
        }


def message_text(message: dict, index: int) -> str:
    """A message's content as text: a string, text parts joined, or empty when null."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise RequestError(f"messages[{index}].content must be a string or text parts", "messages")


def tool_calls_text(tool_calls: Any, index: int, call_format: str) -> str:
    """An assistant's earlier tool_calls as the adapter writes calls (`call_format`)."""
    where = f"messages[{index}].tool_calls"
    if not isinstance(tool_calls, list) or not tool_calls:
        raise RequestError(f"{where} must be a non-empty list", "messages")
    calls = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RequestError(f'{where}: each call needs "function": {{"name"}}', "messages")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            arguments = None
        if not isinstance(arguments, dict):
            raise RequestError(f"{where}: arguments must be a JSON object string", "messages")
        calls.append((function["name"], arguments))
    return render_calls(calls, call_format)


def chat_messages(
    messages: Any, functions: list[dict] | None, call_format: str = DEFAULT_CALL_FORMAT
) -> list[dict[str, str]]:
    """The request's messages as the chat template takes them, the study's system prompt first
    when tools are offered (`functions`), earlier calls written in `call_format`."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    system_texts, turns = [], []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in KNOWN_ROLES:
            raise RequestError(f"messages[{index}].role must be one of {KNOWN_ROLES}", "messages")
        role = message["role"]
        if role == "system":
            system_texts.append(message_text(message, index))
        elif role == "assistant" and message.get("tool_calls"):
            content = tool_calls_text(message["tool_calls"], index, call_format)
            turns.append({"role": role, "content": content})
        else:
            turns.append({"role": role, "content": message_text(message, index)})
    if functions:
        system_texts.insert(0, build_system_prompt(render_tools(functions)))
    system = [{"role": "system", "content": "\n\n".join(system_texts)}] if system_texts else []
    return system + turns


def offered_functions(body: dict) -> list[dict] | None:
    """The function schemas the prompt offers, after checking `tools` and `tool_choice`."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none"):
            raise RequestError("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise RequestError("tools must be a list", "tools")
    functions = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type") != "function"
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("parameters", {}), dict)
        ):
            raise RequestError(
                f'tools[{index}] must be {{"type": "function", "function": {{"name", '
                '"description", "parameters"}}',
                "tools",
            )
        if any(function["name"] == f["name"] for f in functions):
            raise RequestError(f"tools[{index}]: a second tool named {function['name']!r}", "tools")
        functions.append(function)
    if isinstance(choice, dict):
        named = choice.get("function")
        name = named.get("name") if isinstance(named, dict) else None
        if choice.get("type") != "function" or name not in {f["name"] for f in functions}:
            raise RequestError(f"tool_choice names no listed tool: {name!r}", "tool_choice")
    elif choice is not None and choice not in TOOL_CHOICE_MODES:
        raise RequestError(
            f"tool_choice must be one of {TOOL_CHOICE_MODES} or a function", "tool_choice"
        )
    return None if choice == "none" or not functions else functions


def flag(body: dict, name: str) -> bool | None:
    """A boolean body key, None when absent; anything but true or false is a 400."""
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false", name)
    return value


def number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(f"{name} must be a number in [{low}, {high}]", name)
    return float(value)


def stop_strings(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("stop must be a string or a list of non-empty strings", "stop")
    return stops


class ChatServer:
    """The loaded model and the request handling behind the routes."""

    def __init__(
        self,
        tokenizer,
        model_name: str,
        generate_text: GenerateText,
        context_length: int,
        api_key: str | None,
        max_tokens_limit: int,
        log_prompts: bool,
        max_batch: int = 8,
        max_queue: int = 8,
        max_request_bytes: int = 1 << 20,
        call_format: str = DEFAULT_CALL_FORMAT,
        constrain: bool = False,
    ):
        self.tokenizer, self.model_name, self.generate_text = tokenizer, model_name, generate_text
        self.context_length, self.api_key = context_length, api_key
        self.max_tokens_limit, self.log_prompts = max_tokens_limit, log_prompts
        self.max_request_bytes = max_request_bytes
        self.call_format, self.constrain = call_format, constrain
        self.admission = Admission(max_batch + max_queue)

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key, self.api_key):
            raise RequestError("invalid or missing API key", status=401, code="invalid_api_key")

    async def list_models(self, request: Request) -> dict:
        self.check_key(request)
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": OWNER}
        return {"object": "list", "data": [model]}

    async def chat_completions(self, request: Request):
        self.check_key(request)
        raw = await request.body()
        if len(raw) > self.max_request_bytes:
            raise RequestError(
                f"the body is {len(raw):,} bytes; the limit is {self.max_request_bytes:,} "
                "(--max-request-bytes)",
                status=413,
                code="request_too_large",
            )
        try:
            body = json.loads(raw)
        except ValueError:
            raise RequestError("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object")
        job = self.parse(body)
        self.admission.enter()
        if job.stream:
            return StreamingResponse(self.stream_events(job), media_type="text/event-stream")
        try:
            result = await self.answer_unless_left(request, job)
        except Exception as exc:
            SERVER_LOG.exception("generation failed")
            raise RequestError(
                f"generation failed: {exc}", status=500, code="server_error"
            ) from None
        finally:
            self.admission.leave()
        return self.completion(job, result)

    async def answer_unless_left(self, request: Request, job: ChatJob) -> ChatResult:
        """A non-streamed reply; a client that leaves while it decodes ends its row (checked every
        DISCONNECT_POLL_SECONDS), which frees the row and the admission for others."""
        cancelled = threading.Event()
        work = asyncio.ensure_future(
            run_in_threadpool(self.run, job, lambda _deltas: None, cancelled)
        )
        while not work.done():
            await asyncio.wait({work}, timeout=DISCONNECT_POLL_SECONDS)
            if not work.done() and await request.is_disconnected():
                cancelled.set()
        return work.result()

    def parse(self, body: dict) -> ChatJob:
        if body.get("model") != self.model_name:
            raise RequestError(
                f"unknown model {body.get('model')!r}; this server has {self.model_name!r}",
                "model",
                code="model_not_found",
            )
        if body.get("n", 1) != 1:
            raise RequestError("only n=1 is supported", "n")
        functions = offered_functions(body)
        constraint = self.constraint(body, functions)
        messages = chat_messages(body.get("messages"), functions, self.call_format)
        try:
            prompt_ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except USER_ERRORS as exc:
            raise RequestError(str(exc), "messages") from None
        room = self.context_length - len(prompt_ids)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is None:
            max_tokens = min(self.max_tokens_limit, room)
        elif (
            isinstance(max_tokens, bool)
            or not isinstance(max_tokens, int)
            or not 1 <= max_tokens <= self.max_tokens_limit
        ):
            raise RequestError(
                f"max_tokens must be an integer in [1, {self.max_tokens_limit}]", "max_tokens"
            )
        if max_tokens > room or max_tokens < 1:
            raise RequestError(
                f"the prompt's {len(prompt_ids)} tokens plus max_tokens {max_tokens} exceed the "
                f"model's context of {self.context_length}",
                "messages",
                code="context_length_exceeded",
            )
        if body.get("top_p") == 0:
            raise RequestError("top_p must be above 0", "top_p")
        seed = body.get("seed")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
        ):
            raise RequestError(f"seed must be an integer in [0, {MAX_SEED}]", "seed")
        sampling = SamplingConfig(
            max_new_tokens=max_tokens,
            temperature=number(body, "temperature", 1.0, 0.0, 2.0),
            top_p=number(body, "top_p", 1.0, 0.0, 1.0),
            seed=secrets.randbits(31) if seed is None else seed,
        )
        stream_options = body.get("stream_options") or {}
        if self.log_prompts:
            SERVER_LOG.info("prompt:\n%s", self.tokenizer.decode(prompt_ids))
        return ChatJob(
            prompt_ids=prompt_ids,
            sampling=sampling,
            stops=[*stop_strings(body.get("stop")), TURN_END],
            offered_tools={f["name"] for f in functions or []},
            stream=bool(flag(body, "stream")),
            include_usage=isinstance(stream_options, dict)
            and bool(stream_options.get("include_usage")),
            constraint=constraint,
        )

    def constraint(self, body: dict, functions: list[dict] | None) -> TokenConstraint | None:
        """The request's own constraint (module docstring): always for a forced call, for
        "auto" when the request's `constrain`, else --constrain, says so; None without tools."""
        constrain = flag(body, "constrain")
        choice = body.get("tool_choice") or AUTO
        forced = choice not in (AUTO, NONE)
        if not functions or not (forced or (self.constrain if constrain is None else constrain)):
            return None
        try:
            return tool_call_constraint(self.tokenizer, functions, choice, self.call_format)
        except USER_ERRORS as exc:
            raise RequestError(str(exc), "tools") from None

    def run(
        self, job: ChatJob, on_deltas: Callable[[list[dict]], None], cancelled: threading.Event
    ) -> ChatResult:
        """Generate the reply, handing its deltas to `on_deltas` as they are decided (on the
        decode loop's thread); setting `cancelled` ends it at the next token."""
        reply = ReplyText(self.tokenizer.decode, job.stops)
        deltas = ReplyDeltas(job.offered_tools, self.call_format)
        message = ReplyMessage()

        def send(new: list[dict]) -> None:
            if new:
                message.add(new)
                on_deltas(new)

        def on_token(token: int) -> bool:
            send(deltas.add(reply.add(token)))
            return reply.stopped

        request = DecodeRequest(job.prompt_ids, job.sampling, on_token, cancelled, job.constraint)
        ids = self.generate_text(request)
        for token in ids[len(reply.tokens) :]:  # a generator that did not call on_token
            if cancelled.is_set() or on_token(token):
                break
        send(deltas.add(reply.finish()))
        send(deltas.finish())
        if self.log_prompts:
            SERVER_LOG.info("reply:\n%s", reply.text)
        ran_out = not reply.stopped and len(reply.tokens) >= job.sampling.max_new_tokens
        if message.tool_calls:
            finish_reason = "length" if ran_out and not deltas.call_closed else "tool_calls"
        else:
            finish_reason = "length" if ran_out else "stop"
        return ChatResult(message, finish_reason, len(reply.tokens))

    def completion(self, job: ChatJob, result: ChatResult) -> dict:
        tool_calls = result.message.tool_calls
        message = {"role": "assistant", "content": None if tool_calls else result.message.content}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {
            "id": job.completion_id,
            "object": "chat.completion",
            "created": job.created,
            "model": self.model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
            "usage": result.usage(len(job.prompt_ids)),
        }

    def chunk(self, job: ChatJob, delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return self.event(job, {"choices": [choice]})

    def event(self, job: ChatJob, fields: dict) -> str:
        payload = {
            "id": job.completion_id,
            "object": "chat.completion.chunk",
            "created": job.created,
            "model": self.model_name,
            **fields,
        }
        return f"data: {json.dumps(payload)}\n\n"

    async def stream_events(self, job: ChatJob) -> AsyncIterator[str]:
        """Server-sent events: the role, each delta as it is decided, the finish reason, usage
        if asked, then [DONE]. Holds the request's admission until it ends or the client
        leaves; leaving also ends its row in the decode loop."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def post(kind: str, value) -> None:
            if not cancelled.is_set():  # nobody reads after the stream has ended
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def produce() -> None:
            try:
                post("done", self.run(job, lambda deltas: post("deltas", deltas), cancelled))
            except Exception as exc:  # sent to the client as an error event
                SERVER_LOG.exception("generation failed")
                post("error", exc)

        threading.Thread(target=produce, daemon=True).start()
        try:
            yield self.chunk(job, {"role": "assistant", "content": ""})
            while True:
                kind, value = await events.get()
                if kind == "deltas":
                    for delta in value:
                        yield self.chunk(job, delta)
                    continue
                if kind == "error":
                    yield f"data: {json.dumps(error_body(f'generation failed: {value}'))}\n\n"
                    return
                yield self.chunk(job, {}, value.finish_reason)
                if job.include_usage:
                    usage = value.usage(len(job.prompt_ids))
                    yield self.event(job, {"choices": [], "usage": usage})
                break
            yield "data: [DONE]\n\n"
        finally:
            cancelled.set()
            self.admission.leave()


def request_error_response(_request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.param, exc.code), status_code=exc.status)


def create_app(
    model,
    tokenizer,
    model_name: str,
    api_key: str | None = None,
    max_tokens_limit: int = 4096,
    log_prompts: bool = False,
    generate_text: GenerateText | None = None,
    max_batch: int = 8,
    max_queue: int = 8,
    max_request_bytes: int = 1 << 20,
    call_format: str = DEFAULT_CALL_FORMAT,
    constrain: bool = False,
) -> FastAPI:
    """The app serving `model` as `model_name`, decoding up to `max_batch` requests together
    on a DecodeLoop thread that runs until the app shuts down; `generate_text` replaces the
    loop (tests pass a stub, which requests call on their own threads). Calls are written and
    read in `call_format`; `constrain` constrains "auto" requests by default."""
    decode_loop = None
    if generate_text is None:
        stops, pad_id = stop_token_ids(tokenizer), tokenizer.pad_token_id or 0
        decode_loop = DecodeLoop(model, stops, pad_id, max_batch)
        generate_text = decode_loop.generate

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if decode_loop is not None:
            await run_in_threadpool(decode_loop.close)

    server = ChatServer(
        tokenizer,
        model_name,
        generate_text,
        model.args.max_position_embeddings,
        api_key,
        max_tokens_limit,
        log_prompts,
        max_batch,
        max_queue,
        max_request_bytes,
        call_format,
        constrain,
    )
    app = FastAPI(
        title="mlx-plamo serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.add_exception_handler(RequestError, request_error_response)
    app.add_api_route("/v1/models", server.list_models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", server.chat_completions, methods=["POST"])
    return app


def load_served(model_path: str, adapter: str | None) -> tuple[Any, Any, str]:
    """(model, tokenizer, call format): the base with the adapter applied, and the call format
    the adapter's config records (json without an adapter)."""
    model, tokenizer = load(model_path)
    if not adapter:
        return model, tokenizer, DEFAULT_CALL_FORMAT
    call_format = recorded_call_format(read_adapter_config(adapter)[1], adapter)
    load_adapter(model, adapter, None, model_path)
    model.eval()
    return model, tokenizer, call_format


def check_port_free(host: str, port: int) -> None:
    """A one-line error naming host and port unless uvicorn can bind them now (the same
    address family and SO_REUSEADDR as uvicorn's own bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.ClickException(f"cannot serve on {host}:{port}: {reason}") from None


def served_name(model_path: str) -> str:
    """The model id clients send: a Hub id as given, a directory by its name."""
    return model_path if is_hub_id(model_path) else Path(model_path).resolve().name


@click.command(name="serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", required=True, help="MLX or Hugging Face model directory.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="LoRA adapter dir.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; 0.0.0.0 exposes the server to the network.",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to bind."
)
@click.option(
    "--api-key",
    envvar="MLX_PLAMO_API_KEY",
    help="Require this bearer key on every request (never logged); prefer the "
    "MLX_PLAMO_API_KEY environment variable, which keeps it out of the process list.",
)
@click.option(
    "--max-tokens-limit",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Largest max_tokens a request may ask for.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Requests decoded together in one batch; one arriving mid-batch joins at the next step.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Requests that may wait for a row while --max-batch decode; beyond them a request "
    "gets 503 at once.",
)
@click.option(
    "--max-request-bytes",
    type=click.IntRange(min=1),
    default=1 << 20,
    show_default=True,
    help="Largest request body; a larger one gets 413.",
)
@click.option(
    "--constrain",
    is_flag=True,
    help="Constrain replies to tool_choice 'auto' requests that offer tools: a reply that opens "
    "a call must name an offered tool, with arguments its JSON Schema accepts (llguidance). "
    'A request\'s body key "constrain" (true/false) overrides this. tool_choice "required" or a '
    "named function is always constrained, with or without this flag: nothing else forces a "
    "call.",
)
@click.option("--log-prompts", is_flag=True, help="Log each rendered prompt and reply.")
def serve_command(
    model_path: str,
    adapter: str | None,
    host: str,
    port: int,
    api_key: str | None,
    max_tokens_limit: int,
    max_batch: int,
    max_queue: int,
    max_request_bytes: int,
    constrain: bool,
    log_prompts: bool,
) -> None:
    """Serve the model on an OpenAI-compatible /v1/chat/completions endpoint, with tools, calls
    written and read in the adapter's call format (json or PLaMo's markup)."""
    check_port_free(host, port)
    try:
        model, tokenizer, call_format = load_served(model_path, adapter)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    if log_prompts:
        logging.basicConfig(level=logging.INFO)
    name = served_name(model_path)
    url = f"http://{host}:{port}/v1"
    constrained = "all calls constrained" if constrain else "forced calls constrained"
    click.echo(f"serving {name} at {url} (tool calls: {call_format} format, {constrained})")
    key_header = " -H 'Authorization: Bearer <your --api-key>'" if api_key else ""
    click.echo(
        next_step(
            f"curl {url}/chat/completions{key_header} -H 'Content-Type: application/json' -d "
            f'\'{{"model": "{name}", "messages": [{{"role": "user", "content": "Hello"}}]}}\''
        )
    )
    app = create_app(
        model,
        tokenizer,
        name,
        api_key,
        max_tokens_limit,
        log_prompts,
        max_batch=max_batch,
        max_queue=max_queue,
        max_request_bytes=max_request_bytes,
        call_format=call_format,
        constrain=constrain,
    )
    uvicorn.run(app, host=host, port=port)
