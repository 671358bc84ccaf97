"""The MLX model against itself computed other ways, and its config handling."""

from __future__ import annotations

import logging

import mlx.core as mx
import numpy as np
import pytest
from tolerances import SELF_CONSISTENCY_ATOL

from mlx_plamo3 import load_model
from mlx_plamo3.model import Model, ModelArgs

TINY = dict(
    model_type="plamo3",
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    intermediate_size=64,
    vocab_size=64,
    window_size=4,
    sliding_window_pattern=8,
)


def random_tokens(shape: tuple[int, int], vocab: int, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).integers(4, vocab, shape), dtype=mx.int32)


def max_diff(a: mx.array, b: mx.array) -> float:
    return float(mx.abs(a - b).max())


def test_unknown_config_keys_are_logged_not_dropped_silently(caplog):
    with caplog.at_level(logging.WARNING):
        ModelArgs.from_dict({**TINY, "hiden_size": 3})
    assert "hiden_size" in caplog.text


def test_other_model_type_is_refused():
    with pytest.raises(ValueError, match="model_type is 'llama'"):
        ModelArgs.from_dict({**TINY, "model_type": "llama"}, source="x/config.json")


def test_missing_required_key_is_named():
    config = dict(TINY)
    del config["head_dim"]
    with pytest.raises(ValueError, match="head_dim"):
        ModelArgs.from_dict(config)


def test_full_layer_pattern():
    args = ModelArgs.from_dict({**TINY, "num_hidden_layers": 16})
    assert [i for i in range(16) if args.is_full_attention(i)] == [7, 15]


def test_sliding_window_sees_exactly_window_size_keys_including_itself():
    """Pins PFN's definition: query i sees keys j with i - W < j <= i (W keys)."""
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(TINY))  # one layer, sliding (pattern 8)
    assert not model.layers[0].full_attention
    window = TINY["window_size"]
    tokens = random_tokens((1, 12), TINY["vocab_size"])
    last = tokens.shape[1] - 1
    base = model(tokens)[0, -1]

    def last_logits_with_changed(position: int) -> mx.array:
        changed = np.array(tokens)
        changed[0, position] = (changed[0, position] + 7) % TINY["vocab_size"]
        return model(mx.array(changed))[0, -1]

    assert max_diff(last_logits_with_changed(last - (window - 1)), base) > 1e-3
    assert max_diff(last_logits_with_changed(last - window), base) == 0.0


def test_cached_decode_equals_full_forward(tiny_mlx_dir):
    model = load_model(tiny_mlx_dir)
    tokens = random_tokens((2, 40), model.args.vocab_size)  # longer than the 16-token window
    full = model(tokens)
    cache = model.make_cache(2)
    pieces = [model(tokens[:, :9], cache=cache)]
    pieces += [model(tokens[:, t : t + 1], cache=cache) for t in range(9, 40)]
    assert max_diff(mx.concatenate(pieces, axis=1), full) <= SELF_CONSISTENCY_ATOL


def test_sliding_cache_trims_and_still_matches(tiny_mlx_dir, monkeypatch):
    """With a small trim step the sliding layers really drop old keys mid-decode."""
    from mlx_plamo3 import model as model_module

    monkeypatch.setattr(model_module.LayerKV, "step", 4)
    model = load_model(tiny_mlx_dir)
    tokens = random_tokens((1, 48), model.args.vocab_size, seed=3)
    full = model(tokens)
    cache = model.make_cache(1)
    pieces = [model(tokens[:, t : t + 1], cache=cache) for t in range(48)]
    kept = [layer.length for layer, s in zip(cache.layers, cache.sliding, strict=True) if s]
    assert max(kept) < 48, "sliding layers kept every key"
    assert max_diff(mx.concatenate(pieces, axis=1), full) <= SELF_CONSISTENCY_ATOL


def test_left_padded_batch_equals_each_sequence_alone(tiny_mlx_dir):
    model = load_model(tiny_mlx_dir)
    lengths = [33, 20, 5]
    rows = [random_tokens((1, n), model.args.vocab_size, seed=n) for n in lengths]
    width = max(lengths)
    ids = mx.concatenate([mx.pad(r, [(0, 0), (width - r.shape[1], 0)]) for r in rows])
    mask = mx.array([[0] * (width - n) + [1] * n for n in lengths])
    batched = model(ids, attention_mask=mask)
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        assert max_diff(batched[i, width - n :], model(row)[0]) <= SELF_CONSISTENCY_ATOL


def test_packed_segments_equal_separate_examples(tiny_mlx_dir):
    model = load_model(tiny_mlx_dir)
    a = random_tokens((1, 25), model.args.vocab_size, seed=1)
    b = random_tokens((1, 18), model.args.vocab_size, seed=2)
    packed = mx.concatenate([a, b], axis=1)
    positions = mx.concatenate([mx.arange(25), mx.arange(18)])[None]
    segments = mx.array([[0] * 25 + [1] * 18])
    out = model(packed, positions=positions, segment_ids=segments)
    assert max_diff(out[:, :25], model(a)) <= SELF_CONSISTENCY_ATOL
    assert max_diff(out[:, 25:], model(b)) <= SELF_CONSISTENCY_ATOL


def test_norm_offsets_live_in_the_module():
    """Zero stored weights mean effective scales of exactly the offsets."""
    model = Model(ModelArgs.from_dict(TINY))
    layer = model.layers[0]
    x = mx.random.normal((1, 3, TINY["hidden_size"]))
    unit = x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + 1e-6)
    assert max_diff(layer.pre_mixer_norm(x), unit) < 1e-5
    assert max_diff(layer.post_mixer_norm(x), unit / 5) < 1e-5
    assert max_diff(layer.post_mlp_norm(x), unit / 5**1.5) < 1e-5
