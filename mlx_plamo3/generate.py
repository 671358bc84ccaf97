"""Generation with the KV cache: greedy or sampled, batched, with a shared prompt prefix.

Batched prompts are left-padded and masked; a prefix shared by all prompts (the system prompt
with the tool list, in the eval) is run once at batch 1 and its cache copied to every row, the
rest of each prompt following it with padding in between. Masks and RoPE positions come from
token positions, so every row computes what it would compute alone.

Constrained decoding: a row may carry a `TokenConstraint` (a grammar's state, say). Before each
pick its `allowed()` mask sends every disallowed logit to -inf, and every token the row keeps is
passed to its `accept`. This module knows only that protocol, no grammar library. Rows without a
constraint, and runs without any, pick exactly the tokens they pick unconstrained.

`BatchDecoder` is the one decode loop, used by `generate` here and by the server's continuous
batching (`mlx_plamo3.batching`). It holds the running rows, their shared KV cache and each
row's next-token logits. `admit` prefills new requests together and joins their cache to the
running one: the shorter side is left-padded with invalid key slots, which the masks never let a
query see. `step` picks one token per row, each with its own sampling settings (max_new_tokens,
temperature, top_p, seed) and optional `TokenConstraint`, hands it to the request's `on_token`,
and runs the model once on the rows still going. A row leaves the batch (its cache rows are
dropped) when it meets a stop token, reaches max_new_tokens, its `on_token` returns True or
raises, its constraint raises, or its `cancelled` event is set. Greedy rows pick exactly what
they pick alone; a sampled row draws from its own key, split per step from
`mx.random.key(seed)`, so it too samples what it samples alone, whatever else is in the batch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import mlx.core as mx
import numpy as np

from mlx_plamo3.chat_template import ChatTemplateError, validate_messages
from mlx_plamo3.errors import InputError
from mlx_plamo3.io import read_json
from mlx_plamo3.model import Model, Plamo3Cache

# The largest seed `mx.random.key` takes (an unsigned 64-bit integer); seeds are 0..MAX_SEED.
MAX_SEED = 2**64 - 1


@dataclass
class SamplingConfig:
    max_new_tokens: int = 160
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0


class AllowedTokens(Protocol):
    """What a row's next token may be: `allowed()` is a numpy bool array over token ids (True =
    may be picked), or None when any token may; ids beyond its length are disallowed. It must
    allow at least one token."""

    def allowed(self) -> np.ndarray | None: ...


class TokenConstraint(AllowedTokens, Protocol):
    """What a row's next token may be, following the tokens it has produced: `allowed()` as in
    `AllowedTokens`, and `accept(token)` called with each token the row keeps (never with the
    stop token that ends it)."""

    def accept(self, token: int) -> None: ...


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every prompt shares, leaving each at least one token
    of its own (its last prompt token must run in the batched step to yield the first logits)."""
    shortest = min(len(p) for p in prompts)
    length = 0
    while length < shortest - 1 and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return length


# Prompt columns a batched prefill runs per forward pass.
PREFILL_CHUNK = 256
# What one prefill pass costs, in padded prompt columns per row: rows of different lengths are
# prefilled in separate passes (no padding) when padding them together would cost more.
PREFILL_PASS_COLUMNS = 32


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[mx.array, mx.array]:
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return mx.array(ids, dtype=mx.int32), mx.array(mask, dtype=mx.int32)


def prefill_prefix(model: Model, prefix: Sequence[int]) -> Plamo3Cache | None:
    if not prefix:
        return None
    cache = model.make_cache(1)
    # Only the cache is needed: no logits for the prefix.
    mx.eval(model.hidden_states(mx.array([list(prefix)], dtype=mx.int32), cache=cache))
    return cache


def pick_tokens(logits: mx.array, sampling: SamplingConfig, key: mx.array | None) -> mx.array:
    if sampling.temperature <= 0:
        return mx.argmax(logits, axis=-1)
    logits = logits.astype(mx.float32) / sampling.temperature
    if sampling.top_p < 1.0:
        order = mx.argsort(-logits, axis=-1)
        sorted_logits = mx.take_along_axis(logits, order, axis=-1)
        probs = mx.softmax(sorted_logits, axis=-1)
        # Keep the smallest set whose mass reaches top_p (the top token always stays).
        drop = (mx.cumsum(probs, axis=-1) - probs) >= sampling.top_p
        sorted_logits = mx.where(drop, -mx.inf, sorted_logits)
        choice = mx.random.categorical(sorted_logits, key=key)
        return mx.take_along_axis(order, choice[:, None], axis=-1)[:, 0]
    return mx.random.categorical(logits, key=key)


def constrain_logits(logits: mx.array, constraints: Sequence[AllowedTokens | None]) -> mx.array:
    """`logits` [batch, vocab] with what each row's constraint disallows sent to -inf; rows
    without a constraint (or whose constraint allows anything now) are left as they are."""
    masks = [None if constraint is None else constraint.allowed() for constraint in constraints]
    if all(mask is None for mask in masks):
        return logits
    vocab = logits.shape[-1]
    keep = np.ones((len(masks), vocab), dtype=bool)
    for row, mask in enumerate(masks):
        if mask is not None:
            width = min(len(mask), vocab)
            keep[row, :width] = mask[:width]
            keep[row, width:] = False
    return mx.where(mx.array(keep), logits, mx.array(-mx.inf, dtype=logits.dtype))


# Why a row left the batch.
STOP_TOKEN, LENGTH, ENDED_BY_CALLER, CANCELLED = "stop", "length", "ended", "cancelled"


@dataclass
class DecodeRequest:
    """One prompt to continue. `on_token(token)` gets each new token as it is picked (stop tokens
    excluded) and may return True to end the row there; an exception it raises ends the row and
    is raised again to whoever waits for it. Setting `cancelled` ends the row at the next step."""

    prompt_ids: list[int]
    sampling: SamplingConfig
    on_token: Callable[[int], bool | None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    constraint: TokenConstraint | None = None


class Row:
    """A request inside the decoder: its tokens so far and how it ended."""

    def __init__(self, request: DecodeRequest):
        self.request = request
        self.tokens: list[int] = []
        sampled = request.sampling.temperature > 0
        self.key = mx.random.key(request.sampling.seed) if sampled else None
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def allowed(self) -> np.ndarray | None:
        """The constraint's mask now; if the constraint raises, any token, and the error ends
        the row when its token is taken."""
        try:
            constraint = self.request.constraint
            return None if constraint is None else constraint.allowed()
        except Exception as exc:  # raised again in the waiting thread
            self.error = exc
            return None

    def take(self, token: int, stop_ids: set[int]) -> bool:
        """Record the picked `token`; True when the row goes on."""
        request = self.request
        if self.error is not None:
            self.finish_reason = ENDED_BY_CALLER
        elif request.cancelled.is_set():
            self.finish_reason = CANCELLED
        elif token in stop_ids:
            self.finish_reason = STOP_TOKEN
        else:
            self.tokens.append(token)
            try:
                if request.constraint is not None:
                    request.constraint.accept(token)
                ended = request.on_token is not None and request.on_token(token)
            except Exception as exc:  # raised again in the waiting thread
                self.error, ended = exc, True
            if ended:
                self.finish_reason = ENDED_BY_CALLER
            elif len(self.tokens) >= request.sampling.max_new_tokens:
                self.finish_reason = LENGTH
        return self.finish_reason is None


class BatchDecoder:
    """The running batch; see the module docstring. Not thread-safe: one thread drives it."""

    def __init__(self, model: Model, stop_ids: set[int], pad_id: int = 0):
        self.model, self.stop_ids, self.pad_id = model, stop_ids, pad_id
        self.rows: list[Row] = []
        self.cache: Plamo3Cache | None = None
        self.logits: mx.array | None = None  # [rows, vocab]: each row's next-token logits

    def admit(
        self,
        rows: Sequence[Row],
        prefix_cache: Plamo3Cache | None = None,
        prefix_length: int = 0,
    ) -> None:
        """Prefill the requests of `rows` together and add the rows to the batch; `prefix_cache`
        (batch 1) holds the first `prefix_length` tokens all of their prompts share."""
        prompts = [r.request.prompt_ids for r in rows]
        cache, logits = prefill(self.model, prompts, self.pad_id, prefix_cache, prefix_length)
        if self.cache is None:
            self.cache, self.logits = cache, logits
        else:
            self.cache = Plamo3Cache.stack([self.cache, cache])
            self.logits = mx.concatenate([self.logits, logits])
        mx.eval(self.logits)
        self.rows += rows

    def pick(self) -> list[int]:
        """One token per row from its logits, with its own sampling settings and constraint."""
        logits = constrain_logits(self.logits, self.rows)
        greedy = pick_tokens(logits, SamplingConfig(temperature=0.0), None)
        sampled = {}
        for index, row in enumerate(self.rows):
            if row.key is not None:
                row.key, subkey = mx.random.split(row.key)
                sampled[index] = pick_tokens(
                    logits[index : index + 1], row.request.sampling, subkey
                )
        mx.eval(greedy, *sampled.values())
        tokens = greedy.tolist()
        for index, token in sampled.items():
            tokens[index] = token.item()
        return tokens

    def step(self) -> list[Row]:
        """Decode one token for every row; the rows that finished, now out of the batch."""
        tokens = self.pick()
        going = [
            index
            for index, (row, token) in enumerate(zip(self.rows, tokens, strict=True))
            if row.take(token, self.stop_ids)
        ]
        finished = [row for row in self.rows if row.finish_reason is not None]
        if not going:
            self.rows, self.cache, self.logits = [], None, None
            return finished
        if len(going) < len(self.rows):
            self.cache = self.cache.rows(going)
        self.rows = [self.rows[i] for i in going]
        inputs = mx.array([[tokens[i]] for i in going], dtype=mx.int32)
        self.logits = self.model(inputs, cache=self.cache)[:, -1, :]
        mx.eval(self.logits)
        return finished

    def fail(self, error: BaseException) -> list[Row]:
        """End every row with `error` (the model raised); the batch is empty afterwards."""
        rows = self.rows
        for row in rows:
            row.error = error
        self.rows, self.cache, self.logits = [], None, None
        return rows


def generate_batch(
    model: Model,
    prompts: Sequence[Sequence[int]],
    stop_ids: set[int],
    sampling: SamplingConfig,
    pad_id: int,
    prefix_cache: Plamo3Cache | None = None,
    prefix_length: int = 0,
    on_token: Callable[[int, int], None] | None = None,
    constraints: Sequence[TokenConstraint | None] | None = None,
) -> list[list[int]]:
    """New tokens for each prompt (stop token excluded), decoded together by a `BatchDecoder`.
    `prefix_cache` holds the first `prefix_length` tokens shared by all prompts; only the rest of
    each prompt is run here. `on_token(row, token)` sees each kept token; `constraints`, one per
    prompt (None for a free row), restrict what each row may pick. What an `on_token` or a
    constraint raises is raised here once its row has left the batch."""
    batch = len(prompts)
    if constraints is not None and len(constraints) != batch:
        raise ValueError(f"{len(constraints)} constraints for {batch} prompts")
    if sampling.max_new_tokens <= 0:
        return [[] for _ in prompts]
    rows = [
        Row(
            DecodeRequest(
                list(prompt),
                sampling,
                on_token=None if on_token is None else partial(on_token, index),
                constraint=None if constraints is None else constraints[index],
            )
        )
        for index, prompt in enumerate(prompts)
    ]
    decoder = BatchDecoder(model, stop_ids, pad_id)
    decoder.admit(rows, prefix_cache, prefix_length if prefix_cache is not None else 0)
    while decoder.rows:
        for row in decoder.step():
            if row.error is not None:
                raise row.error
    return [row.tokens for row in rows]


def prefill_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Rows (indices into `lengths`) grouped for prefill: sorted by length and cut into the
    contiguous groups that minimise the columns run, each group costing PREFILL_PASS_COLUMNS
    plus its rows times its longest row (padding and passes both cost)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, cut = [0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + PREFILL_PASS_COLUMNS + (end - start) * lengths[order[end - 1]]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def prefill_padded(model: Model, prompts: Sequence[Sequence[int]], pad_id: int, cache) -> mx.array:
    """Run `prompts` left-padded into `cache`; the logits [rows, vocab] of each row's next token.
    In chunks of PREFILL_CHUNK columns, so the attention scores of a long padded batch are never
    all held at once; the output head on the last position only."""
    ids, mask = left_pad(prompts, pad_id)
    for start in range(0, ids.shape[1], PREFILL_CHUNK):
        end = start + PREFILL_CHUNK
        hidden = model.hidden_states(
            ids[:, start:end], cache=cache, attention_mask=mask[:, start:end]
        )
        mx.eval(hidden)
    return model.logits(hidden[:, -1, :])


def prefill(
    model: Model,
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    prefix_cache: Plamo3Cache | None = None,
    prefix_length: int = 0,
) -> tuple[Plamo3Cache, mx.array]:
    """A cache holding `prompts` and each row's next-token logits [rows, vocab], rows in the
    order given. `prefix_cache` (batch 1) holds their first `prefix_length` tokens; each row's
    rest runs in a group of rows of similar length (`prefill_groups`), and the groups' caches
    are stacked, each row's keys padded in front with slots no query sees."""
    rests = [list(p[prefix_length:]) for p in prompts]
    caches, logits, placed = [], [], []
    for group in prefill_groups([len(rest) for rest in rests]):
        if prefix_cache is not None:
            cache = prefix_cache.copy(len(group))
        else:
            cache = model.make_cache(len(group))
        logits.append(prefill_padded(model, [rests[i] for i in group], pad_id, cache))
        caches.append(cache)
        placed += group
    if len(caches) == 1:
        cache, logits = caches[0], logits[0]
    else:
        cache, logits = Plamo3Cache.stack(caches), mx.concatenate(logits)
    if placed != sorted(placed):
        back = [placed.index(row) for row in range(len(placed))]
        cache, logits = cache.rows(back), logits[mx.array(back, dtype=mx.int32)]
    return cache, logits


def prefill_tokens(prompts: Sequence[Sequence[int]], order: Sequence[int], batch_size: int) -> int:
    """Columns a batched prefill in `order` runs: per batch, the common prefix once and the
    rows' rests in `prefill_groups`, each group padded to its longest."""
    total = 0
    for start in range(0, len(order), batch_size):
        chunk = [prompts[i] for i in order[start : start + batch_size]]
        shared = common_prefix_length(chunk) if len(chunk) > 1 else 0
        rests = [len(p) - shared for p in chunk]
        total += shared + sum(
            PREFILL_PASS_COLUMNS + len(group) * max(rests[i] for i in group)
            for group in prefill_groups(rests)
        )
    return total


def batch_order(prompts: Sequence[Sequence[int]], batch_size: int) -> list[int]:
    """The order to batch `prompts` in: sorted (shared prefixes travel together) or by length
    (least padding), whichever `prefill_tokens` says is cheaper."""
    by_prefix = sorted(range(len(prompts)), key=lambda i: prompts[i])
    by_length = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i]))
    return min(by_prefix, by_length, key=lambda order: prefill_tokens(prompts, order, batch_size))


def generate(
    model: Model,
    prompts: Sequence[Sequence[int]],
    stop_ids: set[int],
    sampling: SamplingConfig | None = None,
    pad_id: int = 0,
    batch_size: int = 8,
    share_prefix: bool = True,
    context_length: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    constraints: Sequence[TokenConstraint | None] | None = None,
) -> list[list[int]]:
    """Generate for many prompts in batches, returned in the order given; `constraints`, when
    given, holds one per prompt in the same order (see `TokenConstraint`).

    With `share_prefix`, each batch runs its common prefix once (reused by the next batch when it
    is the same), and the prompts are batched in the order `batch_order` predicts to prefill the
    fewest tokens: sorted, so that prompts with the same tool list travel together, or by
    length, so that prompts with nothing in common beyond the instructions pad the least."""
    sampling = sampling or SamplingConfig()
    if constraints is not None and len(constraints) != len(prompts):
        raise ValueError(f"{len(constraints)} constraints for {len(prompts)} prompts")
    if context_length is not None:
        too_long = [
            i for i, p in enumerate(prompts) if len(p) + sampling.max_new_tokens > context_length
        ]
        if too_long:
            raise InputError(
                f"prompts {too_long[:5]} plus {sampling.max_new_tokens} new tokens exceed the "
                f"model's context of {context_length} tokens"
            )
    order = batch_order(prompts, batch_size) if share_prefix else list(range(len(prompts)))
    results: dict[int, list[int]] = {}
    prefix: list[int] = []
    prefix_cache: Plamo3Cache | None = None
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        chunk = [prompts[i] for i in indices]
        if share_prefix:
            length = common_prefix_length(chunk) if len(chunk) > 1 else len(chunk[0]) - 1
            if list(chunk[0][:length]) != prefix:
                prefix = list(chunk[0][:length])
                prefix_cache = prefill_prefix(model, prefix)
        outputs = generate_batch(
            model,
            chunk,
            stop_ids,
            sampling,
            pad_id,
            prefix_cache,
            len(prefix),
            on_token,
            None if constraints is None else [constraints[i] for i in indices],
        )
        results |= dict(zip(indices, outputs, strict=True))
        if progress is not None:
            progress(len(chunk))
    return [results[i] for i in range(len(prompts))]


def held_back_length(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could begin a stop string."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


class ReplyText:
    """A reply's text as tokens arrive (the server's replies, `generate`'s printout): an
    incomplete UTF-8 character and a possible start of a stop string are held back; the text
    ends before the first stop string."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]):
        self.decode, self.stops = decode, stops
        self.tokens: list[int] = []
        self.text = ""  # what was released so far
        self.stopped = False  # a stop string was met

    def add(self, token: int) -> str:
        """The new text `token` releases."""
        self.tokens.append(token)
        text = self.decode(self.tokens)
        return "" if text.endswith("\ufffd") else self._release(text, final=False)

    def finish(self) -> str:
        """The text still held back, once generation has ended."""
        return self._release(self.decode(self.tokens), final=True)

    def _release(self, text: str, final: bool) -> str:
        cuts = [index for index in (text.find(stop) for stop in self.stops) if index >= 0]
        if cuts:
            text, self.stopped = text[: min(cuts)], True
        end = len(text) if final or self.stopped else len(text) - held_back_length(text, self.stops)
        piece = text[len(self.text) : end]
        self.text += piece
        return piece


class TextStreamer:
    """Prints decoded text as tokens arrive, holding back an incomplete UTF-8 character."""

    def __init__(self, decode: Callable[[list[int]], str], write: Callable[[str], None]):
        self.text, self.write = ReplyText(decode, []), write

    def __call__(self, row: int, token: int) -> None:
        self._print(self.text.add(token))

    def finish(self) -> None:
        """Print what was held back: at the end an incomplete character will not complete."""
        self._print(self.text.finish())

    def _print(self, piece: str) -> None:
        if piece:
            self.write(piece)


def read_messages(path: Path) -> list[dict[str, str]]:
    """The chat in a messages file: a non-empty JSON list of {"role", "content"} with the roles
    and contents the chat template takes (`validate_messages`); errors name the file and the
    message index."""
    chat = read_json(path)
    if not isinstance(chat, list) or not chat:
        raise InputError(f'{path}: expected a non-empty list of {{"role", "content"}}')
    try:
        return validate_messages(chat)
    except ChatTemplateError as exc:
        raise InputError(f"{path}: {exc}") from None


def stop_token_ids(tokenizer) -> set[int]:
    """The chat turn terminator, end-of-sequence and the eos ids of generation_config.json."""
    stops = {tokenizer.convert_tokens_to_ids("<|plamo:tag|>")}
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    stops |= tokenizer.generation_eos_ids
    return {s for s in stops if s is not None}
