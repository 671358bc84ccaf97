"""A small random PLaMo 3 checkpoint in the exact Hugging Face layout, for tests and the demo.

Weights use HF key names, norm weights are stored as deltas from their offsets (as PFN stores
them), and the tokenizer files are the real format with a small vocabulary. Deterministic for
a seed; no torch needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from convert.tiny_vocab import MIN_CORPUS_COUNT, corpus_words, write_tiny_tokenizer
from mlx_plamo3.errors import InputError
from mlx_plamo3.io import atomic_directory, read_json, read_jsonl

TINY_CONFIG: dict[str, Any] = {
    "architectures": ["Plamo3ForCausalLM"],
    "model_type": "plamo3",
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    # Layers 0-2 slide over 16 tokens, layer 3 is full: tests use sequences longer than 16.
    "window_size": 16,
    "sliding_window_pattern": 4,
    "rope_theta": 1_000_000.0,
    "rope_local_theta": 10_000.0,
    "rope_scaling_factor": 1.0,
    "max_position_embeddings": 4096,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
    "torch_dtype": "float32",
}


def tiny_weights(config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Random weights by HF key. Norm deltas are non-zero so a missing offset cannot go
    unnoticed; post-norm deltas near 2 let each block outweigh the residual stream, without
    which a random tied-embedding model just repeats one token whatever the context."""
    rng = np.random.default_rng(seed)
    hidden, inter, head_dim = (
        config["hidden_size"],
        config["intermediate_size"],
        config["head_dim"],
    )
    qkv_out = (config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * head_dim

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return rng.normal(0.0, std, shape).astype(np.float32)

    weights = {"model.embed_tokens.weight": normal((config["vocab_size"], hidden), 0.3)}
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.layers.{i}"
        weights |= {
            f"{prefix}.mixer.qkv_proj.weight": normal((qkv_out, hidden), hidden**-0.5),
            f"{prefix}.mixer.o_proj.weight": normal(
                (hidden, config["num_attention_heads"] * head_dim), hidden**-0.5
            ),
            f"{prefix}.mixer.q_norm.weight": normal((head_dim,), 0.1),
            f"{prefix}.mixer.k_norm.weight": normal((head_dim,), 0.1),
            f"{prefix}.mlp.gate_up_proj.weight": normal((2 * inter, hidden), hidden**-0.5),
            f"{prefix}.mlp.down_proj.weight": normal((hidden, inter), inter**-0.5),
        }
        for norm in ("pre_mixer_norm", "pre_mlp_norm"):
            weights[f"{prefix}.{norm}.weight"] = normal((hidden,), 0.1)
        for norm in ("post_mixer_norm", "post_mlp_norm"):
            weights[f"{prefix}.{norm}.weight"] = normal((hidden,), 0.1) + 2.0
    weights["model.norm.weight"] = normal((hidden,), 0.1)
    if not config["tie_word_embeddings"]:
        weights["lm_head.weight"] = normal((config["vocab_size"], hidden), hidden**-0.5)
    return weights


def read_corpus_words(path: str | Path, limit: int) -> list[tuple[str, float]]:
    """`corpus_words` of a JSON file (one document) or a JSON-lines file (`.jsonl`)."""
    path = Path(path)
    values = (
        [value for _, value in read_jsonl(path)] if path.suffix == ".jsonl" else [read_json(path)]
    )
    words = corpus_words(values, limit)
    if not words:
        raise InputError(f"{path}: no word occurs {MIN_CORPUS_COUNT} or more times in its strings")
    return words


def write_tiny_checkpoint(
    out_dir: str | Path,
    seed: int = 0,
    force: bool = False,
    corpus: Sequence[tuple[str, float]] = (),
    **overrides: Any,
) -> Path:
    """Write config.json, model.safetensors and tokenizer files; returns the directory.

    `corpus`: words to add to the vocabulary (`read_corpus_words`). `overrides` replace config
    values (e.g. tie_word_embeddings=False, rope_scaling_factor=2.0).
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, "mlx-plamo tiny", force=force) as staging:
        vocab_size = write_tiny_tokenizer(staging, corpus)
        config = {**TINY_CONFIG, "vocab_size": vocab_size, **overrides}
        save_file(tiny_weights(config, seed), str(staging / "model.safetensors"), {"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
