"""Merge an MLX LoRA adapter into its base model, written as a Hugging Face checkpoint.

For every adapted linear, W' = W + scale * (lora_a @ lora_b).T with scale = lora_alpha / r,
computed in fp32 and cast once, which is what PEFT's `merge_and_unload` computes
(W + scale * lora_B @ lora_A). A quantized MLX base is dequantized first. Shards are processed
one at a time so the model is never held twice, and the output directory appears only when
complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_plamo3.io import atomic_directory
from mlx_plamo3.loading import (
    read_config,
    read_safetensors_header,
    rewrite_shards,
    weight_files,
)
from mlx_plamo3.lora import AdapterError
from mlx_plamo3.model import Model, ModelArgs
from mlx_plamo3.peft import EXPORT_DTYPES, load_mlx_adapter, module_of

# Files that travel with the weights: tokenizer, chat template, generation settings, the
# checkpoint's own code (for trust_remote_code users) and its license.
SUPPORT_PATTERNS = (
    "tokenizer.jsonl",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "*.py",
    "LICENSE*",
)
FUSE_WRITER = "mlx-plamo export --fused"  # names its output directories (mlx_plamo3.io)


def merge_weight(weight: Any, lora_a: Any, lora_b: Any, scale: float) -> Any:
    """W [out, in] + scale * (lora_a [in, r] @ lora_b [r, out]).T, in fp32."""
    delta = lora_a.astype(mx.float32) @ lora_b.astype(mx.float32)
    return weight.astype(mx.float32) + scale * delta.T


def support_files(base_dir: Path) -> list[Path]:
    found: dict[str, Path] = {}
    for pattern in SUPPORT_PATTERNS:
        for path in sorted(base_dir.glob(pattern)):
            if path.is_file():
                found[path.name] = path
    return list(found.values())


def fused_config(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The base config for full-precision weights of `dtype` (quantization keys dropped)."""
    out = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    out["torch_dtype"] = dtype
    return out


def dequantize_shard(
    weights: dict[str, Any], quantization: dict[str, Any] | None
) -> dict[str, Any]:
    """Full-precision weights for the modules a (MLX-)quantized shard stores quantized."""
    quantized = {k.removesuffix(".scales") for k in weights if k.endswith(".scales")}
    if not quantized:
        return weights
    if not quantization:
        raise AdapterError("the base stores quantized weights but its config has no quantization")
    out = {}
    for key, value in weights.items():
        path = key.rsplit(".", 1)[0]
        if path not in quantized:
            out[key] = value
        elif key.endswith(".weight"):
            out[key] = mx.dequantize(
                value,
                weights[f"{path}.scales"],
                weights[f"{path}.biases"],
                group_size=quantization["group_size"],
                bits=quantization["bits"],
            )
    return out


def fuse_adapter(
    adapter_dir: str | Path,
    base_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "bfloat16",
    force: bool = False,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    on_other_base: Callable[[str], None] | None = None,
) -> Path:
    """Write the base with the adapter merged in, in Hugging Face layout, to `out_dir`.
    `on_other_base`: see `check_same_base` (an adapter trained on another same-shape base)."""
    if dtype not in EXPORT_DTYPES:
        raise AdapterError(f"unknown dtype {dtype!r}; choose one of {EXPORT_DTYPES}")
    adapter_dir, base_dir, out_dir = Path(adapter_dir), Path(base_dir), Path(out_dir)
    base_config = read_config(base_dir)
    args = ModelArgs.from_dict(base_config, source=str(base_dir / "config.json"))
    config, _, lora = load_mlx_adapter(adapter_dir, args, base_dir, on_other_base)

    files = weight_files(base_dir)
    base_keys = {k for f in files for k in read_safetensors_header(f)}
    modules = sorted({module_of(k) for k in lora})
    absent = [m for m in modules if f"{m}.weight" not in base_keys]
    if absent:
        raise AdapterError(f"{base_dir} has no weight for adapted module(s) {absent[:6]}")

    sanitizer = Model(args)  # its sanitize() drops a tied lm_head and RoPE buffers
    target = getattr(mx, dtype)

    def transform(shard: dict[str, mx.array]) -> dict[str, mx.array]:
        shard = dequantize_shard(sanitizer.sanitize(shard), args.quantization)
        for module in modules:
            key = f"{module}.weight"
            if key in shard:
                shard[key] = merge_weight(
                    shard[key], lora[f"{module}.lora_a"], lora[f"{module}.lora_b"], config.scale
                )
        return {
            k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v
            for k, v in shard.items()
        }

    with atomic_directory(out_dir, FUSE_WRITER, force=force) as staging:
        rewrite_shards(files, staging, transform, "pt", progress or (lambda files: files))
        for path in support_files(base_dir):
            shutil.copy2(path, staging / path.name)
        (staging / "config.json").write_text(
            json.dumps(fused_config(base_config, dtype), indent=2) + "\n"
        )
    return out_dir
