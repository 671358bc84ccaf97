"""A LoRA adapter with random non-zero lora_B for export and PyTorch-check tests (with lora_B at
its zero init every comparison would pass vacuously)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_plamo3 import load
from mlx_plamo3.lora import LoraConfig, apply_lora, lora_parameters, save_adapter


def make_random_adapter(
    model_dir: Path,
    out: Path,
    r: int = 4,
    targets: list[str] | None = None,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
):
    """Base + LoRA saved to `out` in MLX form; returns (model, tokenizer)."""
    model, tokenizer = load(model_dir)
    config = LoraConfig(r=r, lora_alpha=2.0 * r, lora_dropout=0.0)
    if targets is not None:
        config.target_modules = targets
    mx.random.seed(seed)  # before apply_lora: lora_a's init draws from the global generator
    apply_lora(model, config)
    noise = [
        (key, 0.1 * mx.random.normal(value.shape))
        for key, value in lora_parameters(model).items()
        if key.endswith(".lora_b")
    ]
    model.load_weights(noise, strict=False)
    model.eval()
    metadata = metadata or {"base_model_name_or_path": "pfnet/plamo-3-nict-2b-base"}
    save_adapter(model, out, config, metadata)
    return model, tokenizer
