"""Continuous batching: requests that arrive at different times decode together in one batch.

`BatchDecoder` holds the running rows, their shared KV cache and each row's next-token logits.
`admit` prefills new requests together (left-padded, as `generate` does) and joins their cache to
the running one: the shorter side is left-padded with invalid key slots, which the masks never
let a query see, so a row computes what it computes alone (masks and RoPE positions come from
each row's own token positions). `step` picks one token per row, each with its own sampling
settings (max_new_tokens, temperature, top_p, seed) and optional `TokenConstraint`, hands it to
the request's `on_token`, and runs the model once on the rows still going. A row leaves the batch
(its cache rows are dropped) when it meets a stop token, reaches max_new_tokens, its `on_token`
returns True or raises, its constraint raises, or its `cancelled` event is set. A row's error
ends that row alone; only an error of the model itself ends the whole batch.

Greedy rows pick exactly what `generate` picks for them alone; a sampled row draws from its own
key, split per step from `mx.random.key(seed)` as `generate` does for a batch of one.

`DecodeLoop` runs a `BatchDecoder` on one thread that owns the model: `generate` (any thread)
queues a request and blocks until its row is done; waiting requests join the batch at the next
step while fewer than `max_batch` rows decode.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from mlx_plamo3.generate import (
    SamplingConfig,
    TokenConstraint,
    constrain_logits,
    pick_tokens,
    prefill,
)
from mlx_plamo3.model import Model, Plamo3Cache

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

    def admit(self, rows: Sequence[Row]) -> None:
        """Prefill the requests of `rows` together and add the rows to the batch."""
        cache, logits = prefill(self.model, [r.request.prompt_ids for r in rows], self.pad_id)
        if self.cache is None:
            self.cache, self.logits = cache, logits
        else:
            self.cache = Plamo3Cache.stack([self.cache, cache])
            self.logits = mx.concatenate([self.logits, logits])
        mx.eval(self.logits)
        self.rows += rows

    def pick(self) -> list[int]:
        """One token per row from its logits, with its own sampling settings and constraint."""
        logits = constrain_logits(self.logits, self.rows, [False] * len(self.rows))
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


class DecodeLoop:
    """A thread that owns the model and decodes every queued request in one shared batch of at
    most `max_batch` rows; see the module docstring."""

    def __init__(self, model: Model, stop_ids: set[int], pad_id: int = 0, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.decoder = BatchDecoder(model, stop_ids, pad_id)
        self.max_batch = max_batch
        self.waiting: collections.deque[Row] = collections.deque()
        self.wake = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="mlx-plamo decode loop", daemon=True)
        self.thread.start()

    def generate(self, request: DecodeRequest) -> list[int]:
        """Queue `request` and wait for its row: the new tokens, stop token excluded. Raises what
        its `on_token` or the model raised."""
        row = Row(request)
        with self.wake:
            if self.closed:
                raise RuntimeError("the decode loop is closed")
            self.waiting.append(row)
            self.wake.notify()
        row.done.wait()
        if row.error is not None:
            raise row.error
        return row.tokens

    def close(self) -> None:
        """Stop the thread after the current step; queued and running rows end as cancelled."""
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.thread.join()

    def _admissions(self) -> list[Row] | None:
        """Waiting requests that fit in the batch (None once closed); blocks while idle."""
        with self.wake:
            while not self.closed and not self.waiting and not self.decoder.rows:
                self.wake.wait()
            if self.closed:
                return None
            admitted = []
            while self.waiting and len(self.decoder.rows) + len(admitted) < self.max_batch:
                row = self.waiting.popleft()
                if row.request.cancelled.is_set():
                    row.finish_reason = CANCELLED
                    row.done.set()
                else:
                    admitted.append(row)
            return admitted

    def _run(self) -> None:
        while (admitted := self._admissions()) is not None:
            try:
                if admitted:
                    self.decoder.admit(admitted)
                finished = self.decoder.step() if self.decoder.rows else []
            except Exception as exc:  # the model failed: every row in the batch hears of it
                finished = self.decoder.fail(exc)
                finished += [row for row in admitted if all(row is not f for f in finished)]
                for row in finished:
                    row.error = row.error or exc
            for row in finished:
                row.done.set()
        self._end_all()

    def _end_all(self) -> None:
        for row in [*self.decoder.rows, *self.waiting]:
            row.finish_reason = row.finish_reason or CANCELLED
            row.done.set()
