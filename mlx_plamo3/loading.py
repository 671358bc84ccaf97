"""Load PLaMo 3 checkpoints (Hugging Face layout or our converted MLX directories) into MLX,
and the checkpoint file layout both share.

Both layouts share key names, so one path loads either: read config.json (checked by
`read_model_args`, errors naming the file and the key), build the model,
quantize the modules the weights say are quantized, then `load_weights(strict=True)` with every
missing or unexpected key listed in a single error. The layout (shards, their names, the
index) is read by `weight_files` and written by `rewrite_shards`, shard by shard, so a
conversion or a fused export never holds more than one shard in memory.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_plamo3.errors import PlamoError
from mlx_plamo3.io import FileFormatError, read_json
from mlx_plamo3.model import Model, ModelArgs
from mlx_plamo3.tokenizer import Plamo3Tokenizer

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_FILE = "model.safetensors.index.json"
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# The float dtypes a model is converted to, loaded in or trained in, by the name options use.
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
# Files besides weights that a checkpoint directory carries for tokenization and chat.
TOKENIZER_FILES = (
    "tokenizer.jsonl",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


class CheckpointError(PlamoError, ValueError):
    """A checkpoint is missing, truncated or does not match the model."""


def is_hub_id(name: str) -> bool:
    """A well-formed Hugging Face repo id 'org/name' (letters, digits, '.', '_', '-'; no '..')."""
    return HUB_ID.fullmatch(name) is not None and ".." not in name


def names_hub_repo(name: str) -> bool:
    """`name` is a Hub id and not a local path: no such file or folder here."""
    return is_hub_id(name) and not Path(name).exists()


def model_reference(path_or_repo: str | Path) -> str:
    """How records name a model: a local directory as an absolute path (it resolves from any
    working directory), a Hub id as given."""
    path = Path(path_or_repo).expanduser()
    return str(path.resolve()) if path.exists() else str(path_or_repo)


def resolve_model_path(path_or_repo: str | Path, revision: str | None = None) -> Path:
    """A local directory as is; anything else is a Hugging Face Hub id to download."""
    path = Path(path_or_repo)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; expected a checkpoint directory")
        return path
    if not names_hub_repo(str(path_or_repo)):
        raise CheckpointError(f"{path_or_repo}: no such directory (and not a Hub id 'org/name')")
    return download_from_hub(str(path_or_repo), revision)


def download_from_hub(repo_id: str, revision: str | None) -> Path:
    """The checkpoint files of a Hub repo (from the local cache when offline), or one
    CheckpointError saying why they cannot be had."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = ["*.json", "*.safetensors", "*.jsonl", "*.jinja", "tokenization_*.py"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        reason = "is gated: accept its terms on the Hub and log in (hf auth login)"
    except RepositoryNotFoundError:
        reason = "does not exist on the Hugging Face Hub (or is private: log in with hf auth login)"
    except RevisionNotFoundError:
        reason = f"has no revision {revision!r}"
    except LocalEntryNotFoundError:
        reason = (
            "cannot be downloaded (offline, or the Hub is unreachable) and is not in the local "
            "Hugging Face cache; download it where there is a connection, or pass a local "
            "checkpoint directory"
        )
    except (HfHubHTTPError, OSError) as exc:
        reason = f"could not be downloaded: {exc}"
    raise CheckpointError(f"{repo_id} {reason}")


def read_config(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's config.json as a dict, or CheckpointError naming the file; its values
    are checked by `read_model_args` (`ModelArgs.from_dict`)."""
    config_path = model_dir / "config.json"
    try:
        config = read_json(config_path)
    except FileFormatError as exc:  # missing, not UTF-8 or not JSON
        raise CheckpointError(str(exc)) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    return config


def read_model_args(model_dir: Path) -> ModelArgs:
    """The checkpoint's config.json as checked model args; errors name the file and the key."""
    return ModelArgs.from_dict(read_config(model_dir), source=str(model_dir / "config.json"))


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor names, dtypes and shapes from a safetensors header, checking the file is whole."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is truncated (no safetensors header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise CheckpointError(f"{path} is truncated (header runs past the end of the file)")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} has a corrupt safetensors header: {exc}") from exc
    header.pop("__metadata__", None)
    data_end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path} is truncated: {size} bytes, the header needs {8 + header_len + data_end}"
        )
    return header


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors shards of a checkpoint, in index order; refuses pickled checkpoints."""
    index_path = model_dir / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = read_json(index_path)["weight_map"]
            files = [model_dir / name for name in dict.fromkeys(weight_map.values())]
        except (FileFormatError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index_path}: no readable weight_map ({exc})") from None
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index_path} names shards that are missing: {missing}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLED_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"{model_dir} holds only pickled weights {pickled}; they can execute code when "
            "loaded, so they are refused. Convert them to safetensors first."
        )
    raise CheckpointError(f"{model_dir} holds no *.safetensors weights")


def shard_name(index: int, count: int) -> str:
    """The Hugging Face name of shard `index` (from 0) of `count`."""
    return (
        "model.safetensors" if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"
    )


def rewrite_shards(
    files: Sequence[Path],
    out_dir: Path,
    transform: Callable[[dict[str, mx.array]], dict[str, mx.array]],
    file_format: str,
    progress: Callable[[Sequence[Path]], Iterable[Path]] = lambda files: files,
) -> None:
    """Each shard of `files` read, passed through `transform` and written to `out_dir` under
    its Hugging Face name, one at a time; then `model.safetensors.index.json`. `file_format`
    is the safetensors metadata "format" ("mlx" or "pt")."""
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for index, file in enumerate(progress(files)):
        name = shard_name(index, len(files))
        shard = transform(mx.load(str(file)))
        mx.save_safetensors(str(out_dir / name), shard, metadata={"format": file_format})
        weight_map |= dict.fromkeys(shard, name)
        total_bytes += sum(v.nbytes for v in shard.values())
        del shard
    index_doc = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index_doc, indent=2, sort_keys=True) + "\n")


def quantized_module_paths(keys: set[str]) -> set[str]:
    return {key.removesuffix(".scales") for key in keys if key.endswith(".scales")}


def build_model(args: ModelArgs, weight_keys: set[str] | None = None) -> Model:
    """The model with the modules that the weights store quantized turned into quantized ones."""
    model = Model(args)
    if args.quantization:
        quantized = quantized_module_paths(weight_keys or set())
        nn.quantize(
            model,
            group_size=args.quantization["group_size"],
            bits=args.quantization["bits"],
            class_predicate=lambda path, module: path in quantized,
        )
    return model


def expected_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in tree_flatten(model.parameters())}


def weight_problems(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    found_label: str = "checkpoint",
    limit: int | None = None,
) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches (at most `limit` of each shown)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{k}: {found_label} {tuple(found[k])}, model {tuple(expected[k])}"
        for k in set(expected) & set(found)
        if tuple(found[k]) != tuple(expected[k])
    )
    named = (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    )
    return [f"{what} ({len(keys)}): {keys[:limit]}" for what, keys in named if keys]


def check_weights(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str
) -> None:
    """One error listing every missing key, unexpected key and shape mismatch."""
    problems = weight_problems(expected, found)
    if problems:
        raise CheckpointError(
            f"{source} does not match the PLaMo 3 model:\n  " + "\n  ".join(problems)
        )


def load_model(
    path_or_repo: str | Path,
    dtype: mx.Dtype | None = None,
    lazy: bool = False,
    revision: str | None = None,
) -> Model:
    """Load a PLaMo 3 model from a local directory or Hub id (HF or converted MLX layout)."""
    model_dir = resolve_model_path(path_or_repo, revision)
    args = read_model_args(model_dir)
    files = weight_files(model_dir)
    weights: dict[str, mx.array] = {}
    for file in files:
        read_safetensors_header(file)
        weights.update(mx.load(str(file)))
    model = build_model(args, set(weights))
    weights = model.sanitize(weights)
    check_weights(
        expected_shapes(model), {k: tuple(v.shape) for k, v in weights.items()}, str(model_dir)
    )
    if dtype is not None:
        weights = {
            k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v
            for k, v in weights.items()
        }
    model.load_weights(list(weights.items()), strict=True)
    if not lazy:
        mx.eval(model.parameters())
    model.eval()
    return model


def load(path_or_repo: str | Path, dtype: mx.Dtype | None = None, lazy: bool = False):
    """(model, tokenizer) from a checkpoint directory or Hub id, like `mlx_lm.load`."""

    model_dir = resolve_model_path(path_or_repo)
    return load_model(model_dir, dtype=dtype, lazy=lazy), Plamo3Tokenizer.from_pretrained(model_dir)
