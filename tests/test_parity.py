"""The MLX port against independent implementations: our PyTorch reference and mlx-lm."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from tolerances import FP32_PARITY_ATOL, MLX_LM_PARITY_ATOL, QUANTIZED_RELATIVE_ERROR

from convert.convert import convert_checkpoint
from convert.tiny import write_tiny_checkpoint
from mlx_plamo3 import load_model

torch = pytest.importorskip("torch")
from mlx_plamo3.torch_reference import load_reference  # noqa: E402


def quiet(items, **_):
    return items


def tokens(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, vocab, (batch, length)).astype(np.int64)


def mlx_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    kwargs = {} if mask is None else {"attention_mask": mx.array(mask)}
    return np.array(model(mx.array(ids.astype(np.int32)), **kwargs))


def torch_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(ids), **kwargs).logits.float().numpy()


@pytest.fixture(scope="module")
def pair(tiny_hf_dir, tiny_mlx_dir):
    return load_model(tiny_mlx_dir), load_reference(tiny_hf_dir, dtype=torch.float32)


def test_logits_match_reference_beyond_the_window(pair):
    mlx_model, ref = pair
    ids = tokens(2, 3 * mlx_model.args.window_size, mlx_model.args.vocab_size)
    diff = np.abs(mlx_logits(mlx_model, ids) - torch_logits(ref, ids)).max()
    assert diff <= FP32_PARITY_ATOL


def test_padded_batch_matches_reference(pair):
    mlx_model, ref = pair
    lengths = [40, 23, 9]
    width = max(lengths)
    ids = tokens(3, width, mlx_model.args.vocab_size, seed=4)
    mask = np.array([[0] * (width - n) + [1] * n for n in lengths])
    ids[mask == 0] = 3
    ours, theirs = mlx_logits(mlx_model, ids, mask), torch_logits(ref, ids, mask)
    assert np.abs(ours - theirs)[mask == 1].max() <= FP32_PARITY_ATOL


def test_cached_decoding_matches_reference(pair):
    mlx_model, ref = pair
    ids = tokens(1, 45, mlx_model.args.vocab_size, seed=5)
    cache = mlx_model.make_cache(1)
    steps = [np.array(mlx_model(mx.array(ids[:, :10].astype(np.int32)), cache=cache))]
    for t in range(10, 45):
        steps.append(np.array(mlx_model(mx.array(ids[:, t : t + 1].astype(np.int32)), cache=cache)))
    diff = np.abs(np.concatenate(steps, axis=1) - torch_logits(ref, ids)).max()
    assert diff <= FP32_PARITY_ATOL


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": False},
        {"rope_scaling_factor": 4.0, "initial_context_length": 16},
    ],
    ids=["untied-head", "yarn"],
)
def test_variants_match_reference(tmp_path, overrides):
    hf = write_tiny_checkpoint(tmp_path / "hf", seed=3, **overrides)
    mlx_model = load_model(
        convert_checkpoint(hf, tmp_path / "mlx", dtype="float32", progress=quiet)
    )
    ref = load_reference(hf, dtype=torch.float32)
    ids = tokens(2, 50, mlx_model.args.vocab_size, seed=6)
    assert np.abs(mlx_logits(mlx_model, ids) - torch_logits(ref, ids)).max() <= FP32_PARITY_ATOL


def test_matches_mlx_lm_up_to_the_window(tiny_mlx_dir):
    """mlx-lm's prefill mask admits window+1 keys; up to the window length both agree."""
    from mlx_lm.utils import load_model as mlx_lm_load_model

    ours = load_model(tiny_mlx_dir)
    theirs, _ = mlx_lm_load_model(Path(tiny_mlx_dir))
    window = ours.args.window_size
    for length in (1, window // 2, window):
        ids = tokens(2, length, ours.args.vocab_size, seed=length)
        diff = np.abs(mlx_logits(ours, ids) - mlx_logits(theirs, ids)).max()
        assert diff <= MLX_LM_PARITY_ATOL, length


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_conversion_stays_close(tiny_hf_dir, tiny_mlx_dir, tmp_path, bits):
    reference = load_model(tiny_mlx_dir)
    quantized_dir = convert_checkpoint(
        tiny_hf_dir,
        tmp_path / "q",
        dtype="float32",
        quantize=True,
        q_bits=bits,
        q_group_size=32,
        progress=quiet,
    )
    quantized = load_model(quantized_dir)
    ids = tokens(2, 30, reference.args.vocab_size, seed=9)
    exact, approx = mlx_logits(reference, ids), mlx_logits(quantized, ids)
    relative = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
    assert 0 < relative <= QUANTIZED_RELATIVE_ERROR[bits]


def test_hf_directory_without_conversion_loads_identically(tiny_hf_dir, tiny_mlx_dir, tmp_path):
    """load_model reads the HF layout directly as well (same keys, no rename table)."""
    copy = Path(shutil.copytree(tiny_hf_dir, tmp_path / "hf"))
    ids = tokens(1, 20, load_model(copy).args.vocab_size)
    assert (
        np.abs(mlx_logits(load_model(copy), ids) - mlx_logits(load_model(tiny_mlx_dir), ids)).max()
        == 0
    )
