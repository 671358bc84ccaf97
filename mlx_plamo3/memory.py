"""What a PLaMo 3 model holds in memory, from its config alone, and what MLX may use here.

Shared by the training plan (`train.memory`) and generation (the eval lowers its batch size to
fit): the bytes of the weights at their stored precision, per-token element counts of one
layer's activations, the memory of a batched generation, and the device's budget.

The budget is what MLX may use on this device: Metal's recommended working set on Apple
silicon (about 75% of RAM), 90% of the GPU's memory under CUDA, else `RAM_SHARE` of the
machine's memory (the share Metal allows by default).
"""

from __future__ import annotations

import os

import mlx.core as mx

from mlx_plamo3.loading import DTYPES
from mlx_plamo3.model import LayerKV, ModelArgs, linear_shapes

GIB = 2**30
RAM_SHARE = 0.75
CUDA_SHARE = 0.90
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


# ---- what the model holds ----------------------------------------------------------------------


def matrix_bytes(rows: int, cols: int, dtype_bytes: int, quantization: dict | None) -> int:
    """A [rows, cols] weight, quantized along cols when its groups divide cols."""
    if quantization and cols % quantization["group_size"] == 0:
        groups = rows * cols // quantization["group_size"]
        return rows * cols * quantization["bits"] // 8 + 2 * groups * dtype_bytes
    return rows * cols * dtype_bytes


def weight_bytes(args: ModelArgs, dtype: str) -> int:
    b, quant = DTYPE_BYTES[dtype], args.quantization
    per_layer = sum(matrix_bytes(o, i, b, quant) for i, o in linear_shapes(args).values())
    per_layer += (4 * args.hidden_size + 2 * args.head_dim) * b  # norms
    embedding = matrix_bytes(args.vocab_size, args.hidden_size, b, quant)
    head = 0 if args.tie_word_embeddings else embedding
    return args.num_hidden_layers * per_layer + embedding + head + args.hidden_size * b


# ---- what one forward pass holds -----------------------------------------------------------


def saved_elements_per_token(args: ModelArgs) -> int:
    """Activations one layer keeps for its backward, per token (attention scores aside): the
    residual stream and norms (~10 x hidden), q/k/v with their norms and rotations (~4 x the
    qkv width) and the MLP's gate/up, activation and product (~5 x intermediate)."""
    qkv = (args.num_attention_heads + 2 * args.num_key_value_heads) * args.head_dim
    return 10 * args.hidden_size + 4 * qkv + 5 * args.intermediate_size


def transient_elements_per_token(args: ModelArgs) -> int:
    """One layer's working set beyond what it keeps, per token: the LoRA inputs rebuilt with
    their dropout masks and float32 copies, and the MLP's backward (~18 x intermediate)."""
    qkv = (args.num_attention_heads + 2 * args.num_key_value_heads) * args.head_dim
    return 20 * args.hidden_size + 4 * qkv + 18 * args.intermediate_size


def activation_dtype(model) -> str:
    """The name of the dtype a loaded model computes in (its norms' dtype)."""
    dtype = model.model.norm.weight.dtype
    return next(name for name, value in DTYPES.items() if value == dtype)


def generation_bytes(args: ModelArgs, dtype: str, batch: int, prompt: int, new: int) -> int:
    """Beyond the weights, a batched generation's peak: the KV cache of every layer for
    prompt + new tokens, the prefill's working set (one layer's activations and its attention
    scores) and the last position's logits."""
    b = DTYPE_BYTES[dtype]
    positions = -(-(prompt + new) // LayerKV.step) * LayerKV.step  # grown in blocks
    kv = args.num_hidden_layers * 2 * args.num_key_value_heads * args.head_dim * positions * b
    prefill = prompt * transient_elements_per_token(args) * b
    scores = 3 * args.num_attention_heads * prompt * prompt * b
    logits = args.vocab_size * 4
    return batch * (kv + prefill + scores + logits)


def generation_batch_size(
    args: ModelArgs, dtype: str, available: int, prompt: int, new: int, requested: int
) -> int:
    """The largest batch up to `requested` whose generation fits in `available` bytes (at
    least 1: one prompt at a time is the least a generation can do)."""
    per_row = generation_bytes(args, dtype, 1, prompt, new)
    return max(1, min(requested, available // max(1, per_row)))


def device_budget() -> tuple[int, str]:
    """(bytes MLX may use here, where that number comes from)."""
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    if mx.default_device().type == mx.gpu:
        if "max_recommended_working_set_size" in info:
            return int(info["max_recommended_working_set_size"]), "Metal's working set"
        if "memory_size" in info:
            return int(CUDA_SHARE * info["memory_size"]), f"{CUDA_SHARE:.0%} of GPU memory"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(RAM_SHARE * ram), f"{RAM_SHARE:.0%} of RAM"


def budget(memory_limit_gib: float | None) -> tuple[int, str]:
    if memory_limit_gib is not None:
        return int(memory_limit_gib * GIB), "--memory-limit"
    return device_budget()
