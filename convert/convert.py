"""Hugging Face PLaMo 3 checkpoint -> MLX model directory (also loadable by `mlx_lm.load`).

Shard by shard: each input shard is read lazily, cast (and optionally quantized), written, and
released before the next, so the model is never held twice in memory. Every key and shape is
checked against the model from the safetensors headers before any weight is read, and the
output directory appears only when it is complete.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from tqdm import tqdm

from convert.hf_tokenizer import write_hf_tokenizer
from mlx_plamo3.errors import InputError
from mlx_plamo3.io import atomic_directory, check_replaceable
from mlx_plamo3.loading import (
    DTYPES,
    TOKENIZER_FILES,
    CheckpointError,
    build_model,
    check_weights,
    expected_shapes,
    read_config,
    read_safetensors_header,
    resolve_model_path,
    rewrite_shards,
    weight_files,
)
from mlx_plamo3.model import Model, ModelArgs
from mlx_plamo3.tokenizer import VOCAB_FILE

CONVERT_WRITER = "python -m convert"  # names its output directories (mlx_plamo3.io)


def quantizable_paths(model: Model, group_size: int) -> set[str]:
    """Linear and embedding modules whose input width splits into whole groups."""
    return {
        path
        for path, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Embedding))
        and module.weight.shape[-1] % group_size == 0
    }


def header_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        for key, info in read_safetensors_header(file).items():
            if key in shapes:
                raise CheckpointError(f"{file}: key {key} also appears in another shard")
            shapes[key] = tuple(info["shape"])
    return shapes


def convert_shard(
    weights: dict[str, mx.array],
    dtype: mx.Dtype,
    quantize_paths: set[str],
    quantization: dict[str, int] | None,
) -> dict[str, mx.array]:
    out: dict[str, mx.array] = {}
    for key, value in weights.items():
        value = value.astype(dtype)
        module_path = key.removesuffix(".weight")
        if quantization and key.endswith(".weight") and module_path in quantize_paths:
            q, scales, biases = mx.quantize(
                value, group_size=quantization["group_size"], bits=quantization["bits"]
            )
            out |= {key: q, f"{module_path}.scales": scales, f"{module_path}.biases": biases}
        else:
            out[key] = value
    return out


def copy_support_files(source: Path, dest: Path) -> list[str]:
    """Tokenizer, template and generation files travel with the weights, plus a fast-tokenizer
    tokenizer.json (and tokenizer_config.json pointing at it) so that AutoTokenizer, and so
    mlx_lm.load, need no remote code."""
    names = [n for n in TOKENIZER_FILES if (source / n).is_file()]
    names += sorted(p.name for p in source.glob("tokenization_*.py"))
    for name in names:
        shutil.copy2(source / name, dest / name)
    written = write_hf_tokenizer(source, dest)
    if written is not None:
        names.append(written.name)
    return names


def source_provenance(hf_path: str | Path, source: Path) -> dict[str, str]:
    """Where the weights came from, so adapters trained on them can name their base. A Hub
    snapshot directory is named after its commit."""
    if Path(hf_path).exists():
        return {"_name_or_path": str(hf_path)}
    return {"_name_or_path": str(hf_path), "_commit_hash": source.name}


def output_config(config: dict[str, Any], dtype: str, quantization: dict | None) -> dict:
    config = {**config, "torch_dtype": dtype}
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    if quantization:
        # mlx-lm reads `quantization`; transformers-style tools read `quantization_config`.
        config["quantization"] = dict(quantization)
        config["quantization_config"] = dict(quantization)
    return config


def convert_checkpoint(
    hf_path: str | Path,
    mlx_path: str | Path,
    dtype: str = "bfloat16",
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    force: bool = False,
    revision: str | None = None,
    progress: Callable[[Any], Any] = tqdm,
) -> Path:
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    mlx_path = Path(mlx_path)
    check_replaceable(mlx_path, CONVERT_WRITER, force)  # before any download or reading
    source = resolve_model_path(hf_path, revision)
    if not (source / VOCAB_FILE).is_file():
        raise CheckpointError(
            f"{source} has no {VOCAB_FILE} (PLaMo's vocabulary), so the converted model could "
            "not tokenize anything; copy it from the original checkpoint"
        )
    config = read_config(source)
    args = ModelArgs.from_dict(config, source=str(source / "config.json"))
    files = weight_files(source)

    # Validate everything from the headers before reading or writing any weight.
    plain = build_model(args)
    found = header_shapes(files)
    found = {k: v for k, v in found.items() if k in plain.sanitize(dict.fromkeys(found))}
    check_weights(expected_shapes(plain), found, str(source))

    quantization = {"group_size": q_group_size, "bits": q_bits} if quantize else None
    quantize_paths = quantizable_paths(plain, q_group_size) if quantize else set()

    def transform(shard: dict[str, mx.array]) -> dict[str, mx.array]:
        return convert_shard(plain.sanitize(shard), DTYPES[dtype], quantize_paths, quantization)

    try:
        with atomic_directory(mlx_path, CONVERT_WRITER, force=force) as staging:
            shards = partial(progress, desc="converting shards", unit="shard")
            rewrite_shards(files, staging, transform, "mlx", shards)
            copy_support_files(source, staging)
            (staging / "config.json").write_text(
                json.dumps(
                    output_config(config, dtype, quantization) | source_provenance(hf_path, source),
                    indent=2,
                )
                + "\n"
            )
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CheckpointError(
                f"no space left on the device while writing {mlx_path}; nothing was changed there"
            ) from exc
        raise
    return mlx_path
