"""Continuous batching: rows that join a running batch at any step, leave it at any step, and
carry their own sampling settings decode exactly what `generate` decodes for each alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mlx_plamo3 import load_model
from mlx_plamo3.batching import DecodeLoop
from mlx_plamo3.generate import (
    CANCELLED,
    ENDED_BY_CALLER,
    LENGTH,
    STOP_TOKEN,
    BatchDecoder,
    DecodeRequest,
    Row,
    SamplingConfig,
    generate,
)


@pytest.fixture(scope="module")
def model(tiny_mlx_dir):
    return load_model(tiny_mlx_dir)


def random_prompts(vocab: int, lengths: list[int], seed: int = 5) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(4, vocab, n)] for n in lengths]


def alone(model, prompt: list[int], sampling: SamplingConfig, stops=frozenset()) -> list[int]:
    return generate(model, [prompt], set(stops), sampling, share_prefix=False)[0]


def run_staggered(decoder: BatchDecoder, arrivals: dict[int, list[Row]]) -> None:
    """Step the decoder until every row is done, admitting `arrivals[step]` before that step."""
    step = 0
    pending = sum(len(rows) for rows in arrivals.values())
    while pending:
        if step in arrivals:
            decoder.admit(arrivals[step])
        if decoder.rows:
            pending -= len(decoder.step())
        step += 1


def test_rows_joining_and_leaving_mid_batch_decode_as_alone(model):
    # Prompt lengths straddle the tiny model's 16-token window and the cache's trimming point
    # (256 + 16 slots), so joins pad both kinds of layer and trims run inside a merged batch.
    prompts = random_prompts(model.args.vocab_size, [5, 40, 300, 12, 9, 270])
    settings = [
        SamplingConfig(max_new_tokens=n, temperature=t, top_p=p, seed=s)
        for n, t, p, s in [(30, 0, 1, 0), (8, 0, 1, 0), (25, 0.9, 0.8, 3), (20, 0, 1, 0),
                           (12, 1.0, 1.0, 7), (6, 0, 1, 0)]
    ]  # fmt: skip
    rows = [Row(DecodeRequest(p, s)) for p, s in zip(prompts, settings, strict=True)]
    decoder = BatchDecoder(model, stop_ids=set())
    run_staggered(decoder, {0: rows[:2], 3: rows[2:3], 4: rows[3:5], 10: rows[5:]})
    assert decoder.rows == [] and decoder.cache is None
    for row, prompt, sampling in zip(rows, prompts, settings, strict=True):
        assert row.tokens == alone(model, prompt, sampling)
        assert row.finish_reason == LENGTH
    assert len({tuple(row.tokens) for row in rows}) == len(rows), "outputs ignore the prompt"


def test_each_row_stops_on_its_own_terms(model):
    prompts = random_prompts(model.args.vocab_size, [7, 11, 13, 6], seed=9)
    greedy = SamplingConfig(max_new_tokens=20)
    free = [alone(model, p, greedy) for p in prompts]
    stop = free[0][4]
    seen: list[int] = []
    cancelled = DecodeRequest(prompts[3], greedy)
    requests = [
        DecodeRequest(prompts[0], greedy),  # meets the stop token
        DecodeRequest(prompts[1], greedy, on_token=lambda token: len(seen) >= 2 or seen.append(0)),
        DecodeRequest(prompts[2], SamplingConfig(max_new_tokens=3)),
        cancelled,
    ]
    rows = [Row(request) for request in requests]
    decoder = BatchDecoder(model, stop_ids={stop})
    decoder.admit(rows)
    decoder.step()
    cancelled.cancelled.set()
    while decoder.rows:
        decoder.step()
    assert rows[0].tokens == free[0][: free[0].index(stop)]
    assert rows[0].finish_reason == STOP_TOKEN
    assert rows[1].tokens == free[1][:3] and rows[1].finish_reason == ENDED_BY_CALLER
    assert rows[2].tokens == free[2][:3] and rows[2].finish_reason == LENGTH
    assert rows[3].tokens == free[3][:1] and rows[3].finish_reason == CANCELLED


class OnlyTokens:
    """A constraint allowing a fixed set of ids, recording what it was told."""

    def __init__(self, vocab: int, ids: list[int]):
        self.mask = np.zeros(vocab, dtype=bool)
        self.mask[ids] = True
        self.accepted: list[int] = []

    def allowed(self):
        return self.mask

    def accept(self, token: int) -> None:
        self.accepted.append(token)


def test_a_constraint_restricts_only_its_own_row(model):
    vocab = model.args.vocab_size
    prompts = random_prompts(vocab, [8, 10], seed=2)
    greedy = SamplingConfig(max_new_tokens=10)
    free = alone(model, prompts[1], greedy)
    allowed_ids = [5, 17, 40]
    constraint = OnlyTokens(vocab, allowed_ids)
    rows = [
        Row(DecodeRequest(prompts[0], greedy, constraint=constraint)),
        Row(DecodeRequest(prompts[1], greedy)),
    ]
    decoder = BatchDecoder(model, stop_ids=set())
    run_staggered(decoder, {0: rows})
    assert set(rows[0].tokens) <= set(allowed_ids) and len(rows[0].tokens) == 10
    assert constraint.accepted == rows[0].tokens
    assert rows[1].tokens == free


class FailsAt(OnlyTokens):
    """Allows every token until its `when`-th call of `method`, which raises."""

    def __init__(self, vocab: int, method: str, when: int):
        super().__init__(vocab, list(range(vocab)))
        self.method, self.when, self.calls = method, when, 0

    def _count(self, method: str) -> None:
        if method == self.method:
            self.calls += 1
            if self.calls == self.when:
                raise RuntimeError(f"grammar broke in {method}")

    def allowed(self):
        self._count("allowed")
        return super().allowed()

    def accept(self, token: int) -> None:
        self._count("accept")
        super().accept(token)


@pytest.mark.parametrize("method", ["allowed", "accept"])
def test_a_failing_constraint_ends_its_own_row_only(model, method):
    vocab = model.args.vocab_size
    prompts = random_prompts(vocab, [7, 9, 12], seed=8)
    greedy = SamplingConfig(max_new_tokens=8)
    expected = [alone(model, prompt, greedy) for prompt in prompts]
    rows = [
        Row(DecodeRequest(prompts[0], greedy)),
        Row(DecodeRequest(prompts[1], greedy, constraint=FailsAt(vocab, method, 3))),
        Row(DecodeRequest(prompts[2], greedy)),
    ]
    decoder = BatchDecoder(model, stop_ids=set())
    run_staggered(decoder, {0: rows})
    assert [rows[0].tokens, rows[2].tokens] == [expected[0], expected[2]]
    assert rows[0].error is None and rows[2].error is None
    assert isinstance(rows[1].error, RuntimeError) and "grammar broke" in str(rows[1].error)
    # Tokens up to the failure are the row's own: an all-allowing constraint changes nothing.
    assert rows[1].tokens == expected[1][: len(rows[1].tokens)] and len(rows[1].tokens) < 8

    loop = DecodeLoop(model, stop_ids=set(), max_batch=4)
    with pytest.raises(RuntimeError, match="grammar broke"):
        loop.generate(DecodeRequest(prompts[1], greedy, constraint=FailsAt(vocab, method, 2)))
    assert loop.generate(DecodeRequest(prompts[0], greedy)) == expected[0]
    loop.close()


def test_the_loop_serves_threads_together_and_reports_their_errors(model):
    prompts = random_prompts(model.args.vocab_size, [6, 9, 14, 5, 20], seed=4)
    settings = [SamplingConfig(max_new_tokens=4 + 3 * i) for i in range(len(prompts))]
    loop = DecodeLoop(model, stop_ids=set(), max_batch=2)
    results: dict[int, list[int]] = {}

    def ask(index: int) -> None:
        results[index] = loop.generate(DecodeRequest(prompts[index], settings[index]))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {
        i: alone(model, p, s) for i, (p, s) in enumerate(zip(prompts, settings, strict=True))
    }

    def refuse(_token: int) -> bool:
        raise ValueError("client went away")

    with pytest.raises(ValueError, match="client went away"):
        loop.generate(DecodeRequest(prompts[0], settings[0], on_token=refuse))
    assert loop.generate(DecodeRequest(prompts[1], settings[1])) == results[1]  # still serving
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.generate(DecodeRequest(prompts[1], settings[1]))
