"""Continuous batching: requests that arrive at different times, from any thread, decode
together in one batch.

`DecodeLoop` runs a `mlx_plamo3.generate.BatchDecoder` on one thread that owns the model:
`generate` (any thread) queues a request and blocks until its row is done; waiting requests are
prefilled and join the batch at the next step while fewer than `max_batch` rows decode. A row's
error ends that row alone; only an error of the model itself ends the whole batch. Closing the
loop ends queued and running rows as cancelled.
"""

from __future__ import annotations

import collections
import threading

from mlx_plamo3.generate import CANCELLED, BatchDecoder, DecodeRequest, Row
from mlx_plamo3.model import Model


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
