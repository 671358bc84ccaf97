"""MLX LoRA adapters <-> Hugging Face PEFT LoRA adapters (peft's on-disk format).

The MLX model's module paths are the checkpoint keys, so the mapping is data, not code: a fixed
prefix, a factor rename and a transpose. MLX computes `x @ lora_a @ lora_b` with lora_a
[in, r] and lora_b [r, out]; PEFT stores its two factors as `nn.Linear` weights, lora_A
[r, in] and lora_B [out, r]. Both sides scale the update by lora_alpha / r.

    <path>.lora_a  [in, r]   <->  base_model.model.<path>.lora_A.weight  [r, in]
    <path>.lora_b  [r, out]  <->  base_model.model.<path>.lora_B.weight  [out, r]

Library knowledge: the key map, the shapes a base needs, reading and checking a PEFT adapter
(and an MLX one against a base), and writing the PEFT files; `adapters.export` makes the
export directory around them. Every check here raises `AdapterError` listing all problems at
once, naming the file and key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_plamo3.io import (
    FileFormatError,
    atomic_save_safetensors,
    atomic_write_json,
    file_sha256,
    read_json,
)
from mlx_plamo3.loading import CheckpointError, read_safetensors_header, weight_problems
from mlx_plamo3.lora import (
    ADAPTER_WEIGHTS,
    BASE_WEIGHTS_KEY,
    AdapterError,
    LoraConfig,
    check_base_shapes,
    check_same_base,
    checkpoint_weights_fingerprint,
    read_adapter_config,
    read_adapter_weights,
)
from mlx_plamo3.model import ModelArgs, linear_shapes

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
# Provenance beside the PEFT files (peft ignores unknown files, but not unknown config keys).
EXPORT_INFO = "mlx_plamo3_export.json"
EXPORT_FORMAT = "mlx-plamo3-peft-export"
PEFT_PREFIX = "base_model.model."
DEFAULT_BASE_MODEL = "pfnet/plamo-3-nict-2b-base"
EXPORT_DTYPES = ("float32", "bfloat16", "float16")

# MLX factor name -> PEFT factor name; both factors are stored transposed on the PEFT side.
FACTOR_NAMES: dict[str, str] = {"lora_a": "lora_A", "lora_b": "lora_B"}
PEFT_FACTOR_NAMES: dict[str, str] = {v: k for k, v in FACTOR_NAMES.items()}

# Where each LoRA-able linear lives inside a decoder layer.
MODULE_PARENTS: dict[str, str] = {
    "qkv_proj": "mixer",
    "o_proj": "mixer",
    "gate_up_proj": "mlp",
    "down_proj": "mlp",
}


# ---- key mapping --------------------------------------------------------------------------


def mlx_to_peft_key(key: str) -> str:
    """`<path>.lora_a` -> `base_model.model.<path>.lora_A.weight` (and lora_b -> lora_B)."""
    path, _, factor = key.rpartition(".")
    if not path or factor not in FACTOR_NAMES:
        raise AdapterError(
            f"unknown MLX LoRA key {key!r}: expected '<module path>.lora_a' or '.lora_b'"
        )
    return f"{PEFT_PREFIX}{path}.{FACTOR_NAMES[factor]}.weight"


def peft_to_mlx_key(key: str) -> str:
    """`base_model.model.<path>.lora_A.weight` -> `<path>.lora_a` (and lora_B -> lora_b)."""
    body = key.removeprefix(PEFT_PREFIX).removesuffix(".weight")
    path, _, factor = body.rpartition(".")
    if (
        not key.startswith(PEFT_PREFIX)
        or not key.endswith(".weight")
        or not path
        or factor not in PEFT_FACTOR_NAMES
    ):
        raise AdapterError(
            f"unknown PEFT LoRA key {key!r}: expected "
            f"'{PEFT_PREFIX}<module path>.lora_A.weight' or '.lora_B.weight'"
        )
    return f"{path}.{PEFT_FACTOR_NAMES[factor]}"


def module_of(mlx_key: str) -> str:
    """The module path of an MLX LoRA key (`...qkv_proj.lora_a` -> `...qkv_proj`)."""
    return mlx_key.rpartition(".")[0]


def mlx_to_peft_weights(weights: Mapping[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """MLX LoRA factors as PEFT tensors: renamed, transposed, cast to `dtype`."""
    import mlx.core as mx

    if dtype not in EXPORT_DTYPES:
        raise AdapterError(f"unknown dtype {dtype!r}; choose one of {EXPORT_DTYPES}")
    target = getattr(mx, dtype)
    # Cast after transposing in fp32: the one rounding step is the cast itself.
    return {
        mlx_to_peft_key(key): mx.contiguous(value.astype(mx.float32).T).astype(target)
        for key, value in weights.items()
    }


def peft_to_mlx_weights(weights: Mapping[str, Any]) -> dict[str, Any]:
    """PEFT LoRA tensors as MLX factors (fp32, as the MLX LoRA layers keep them)."""
    import mlx.core as mx

    return {
        peft_to_mlx_key(key): mx.contiguous(value.astype(mx.float32).T)
        for key, value in weights.items()
    }


# ---- expected shapes from a base config ----------------------------------------------------


def expected_mlx_shapes(
    args: ModelArgs, r: int, target_modules: Iterable[str]
) -> dict[str, tuple[int, ...]]:
    """MLX LoRA key -> shape for a base config, rank and target set."""
    dims = linear_shapes(args)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(args.num_hidden_layers):
        for name in sorted(set(target_modules)):
            if name not in dims:
                raise AdapterError(f"unknown target module {name!r}; expected one of {list(dims)}")
            path = f"model.layers.layers.{i}.{MODULE_PARENTS[name]}.{name}"
            in_dims, out_dims = dims[name]
            shapes[f"{path}.lora_a"] = (in_dims, r)
            shapes[f"{path}.lora_b"] = (r, out_dims)
    return shapes


def expected_peft_shapes(
    args: ModelArgs, r: int, target_modules: Iterable[str]
) -> dict[str, tuple[int, ...]]:
    """PEFT key -> shape: the MLX shapes renamed and transposed."""
    return {
        mlx_to_peft_key(k): tuple(reversed(v))
        for k, v in expected_mlx_shapes(args, r, target_modules).items()
    }


# ---- checks ---------------------------------------------------------------------------------


def check_mlx_adapter(
    weights: Mapping[str, tuple[int, ...]],
    config: LoraConfig,
    args: ModelArgs | None = None,
    source: str = "adapter",
) -> None:
    """An MLX adapter's factors agree with its config (rank, targets) and, given the base
    config, with the base's shapes."""
    problems = consistency_problems({k: tuple(v) for k, v in weights.items()}, config)
    if args is not None and not problems:
        expected = expected_mlx_shapes(args, config.r, config.target_modules)
        problems = [
            f"does not fit the base model: {p}"
            for p in weight_problems(expected, weights, "adapter", limit=6)
        ]
    if problems:
        raise AdapterError(f"{source}: " + "\n  ".join(problems))


def consistency_problems(shapes: Mapping[str, tuple[int, ...]], config: LoraConfig) -> list[str]:
    """Rank and target-set disagreements between MLX-keyed factor shapes and a config."""
    problems = []
    modules = sorted({module_of(k) for k in shapes})
    for path in modules:
        a, b = shapes.get(f"{path}.lora_a"), shapes.get(f"{path}.lora_b")
        if a is None or b is None:
            problems.append(f"{path} has only one of its two LoRA factors")
            continue
        if len(a) != 2 or len(b) != 2 or a[1] != config.r or b[0] != config.r:
            problems.append(
                f"rank mismatch at {path}: factors {list(a)} and {list(b)}, config r={config.r}"
            )
    found_targets = {p.rsplit(".", 1)[-1] for p in modules}
    if found_targets != set(config.target_modules):
        problems.append(
            f"target_modules mismatch: config {sorted(config.target_modules)}, "
            f"weights cover {sorted(found_targets)}"
        )
    return problems


# ---- reading a PEFT adapter -----------------------------------------------------------------


@dataclass
class PeftAdapter:
    """A PEFT LoRA adapter directory, read without loading its tensors."""

    path: Path
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]  # PEFT key -> shape
    info: dict[str, Any] | None = None  # our export provenance, when exported by us
    lora: LoraConfig = field(init=False)

    def __post_init__(self) -> None:
        self.lora = LoraConfig(
            r=int(self.config["r"]),
            lora_alpha=float(self.config["lora_alpha"]),
            lora_dropout=float(self.config.get("lora_dropout", 0.0)),
            target_modules=list(self.config["target_modules"]),
        )

    @property
    def mlx_shapes(self) -> dict[str, tuple[int, ...]]:
        return {peft_to_mlx_key(k): tuple(reversed(v)) for k, v in self.shapes.items()}


def read_peft_adapter(adapter_dir: str | Path) -> PeftAdapter:
    """Read and check a PEFT LoRA adapter's config and tensor header.

    Refuses what the MLX side cannot reproduce: non-LoRA adapters, rsLoRA/DoRA, fan-in-fan-out
    layouts, regex target_modules, and factors inconsistent with the config."""

    root = Path(adapter_dir)
    config_path, weights_path = root / PEFT_CONFIG, root / PEFT_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise AdapterError(f"{path} is missing; is {root} a PEFT adapter directory?")
    try:
        config = read_json(config_path)
    except FileFormatError as exc:  # not UTF-8 or not JSON
        raise AdapterError(str(exc)) from None
    problems = peft_config_problems(config)
    if problems:
        raise AdapterError(f"{config_path}: " + "; ".join(problems))
    try:
        header = read_safetensors_header(weights_path)
    except CheckpointError as exc:
        raise AdapterError(str(exc)) from None
    shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    bad_keys = []
    for key in shapes:
        try:
            peft_to_mlx_key(key)
        except AdapterError:
            bad_keys.append(key)
    if bad_keys:
        raise AdapterError(f"{weights_path}: keys that are not LoRA factors: {bad_keys[:6]}")
    info_path = root / EXPORT_INFO
    try:
        info = read_json(info_path) if info_path.is_file() else None
    except FileFormatError as exc:
        raise AdapterError(str(exc)) from None
    adapter = PeftAdapter(root, config, shapes, info)
    problems = consistency_problems(adapter.mlx_shapes, adapter.lora)
    if problems:
        raise AdapterError(f"{root}: weights disagree with {PEFT_CONFIG}: " + "; ".join(problems))
    return adapter


def peft_config_problems(config: Any) -> list[str]:
    if not isinstance(config, dict):
        return ["expected a JSON object"]
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            problems.append(f"missing {key!r}")
    if not isinstance(config.get("target_modules", []), list):
        problems.append(
            f"target_modules {config.get('target_modules')!r} is not a list of module names "
            "(regular expressions are not supported)"
        )
    for flag in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if config.get(flag):
            problems.append(f"{flag} is set; only plain LoRA (scale lora_alpha / r) is supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            problems.append(f"{key} is not empty; per-module ranks/alphas are not supported")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config.get('bias')!r}; only 'none' is supported")
    return problems


def check_peft_fits_base(adapter: PeftAdapter, args: ModelArgs, base: str = "base") -> None:
    """The PEFT adapter's tensors have the shapes this base model needs, and (when the export
    recorded it) it was trained on a base with this base's fingerprint."""
    problems = []
    expected = expected_peft_shapes(args, adapter.lora.r, adapter.lora.target_modules)
    problems += [
        f"shapes: {p}" for p in weight_problems(expected, adapter.shapes, "adapter", limit=6)
    ]
    try:
        check_base_shapes((adapter.info or {}).get("base_fingerprint"), args, "it", base)
    except AdapterError as exc:
        problems.append(f"base fingerprint: {exc}")
    if problems:
        raise AdapterError(
            f"{adapter.path} does not fit the base model {base}:\n  " + "\n  ".join(problems)
        )


def check_peft_matches_mlx(adapter: PeftAdapter, mlx_adapter_dir: str | Path) -> None:
    """The PEFT adapter is an export of this MLX adapter: same rank, alpha, target set, base
    fingerprint and (when recorded) the same weights file."""
    config, document = read_adapter_config(mlx_adapter_dir)
    mismatches = []
    if adapter.lora.r != config.r:
        mismatches.append(f"rank r: PEFT {adapter.lora.r}, MLX {config.r}")
    if adapter.lora.lora_alpha != config.lora_alpha:
        mismatches.append(f"lora_alpha: PEFT {adapter.lora.lora_alpha}, MLX {config.lora_alpha}")
    if set(adapter.lora.target_modules) != set(config.target_modules):
        mismatches.append(
            f"target_modules: PEFT {sorted(adapter.lora.target_modules)}, "
            f"MLX {sorted(config.target_modules)}"
        )
    info = adapter.info or {}
    for key, name in (("base_fingerprint", "base fingerprint"), (BASE_WEIGHTS_KEY, "base weights")):
        mlx_print, peft_print = document.get(key), info.get(key)
        if mlx_print and peft_print and mlx_print != peft_print:
            mismatches.append(f"{name}: PEFT {peft_print}, MLX {mlx_print}")
    weights = Path(mlx_adapter_dir) / ADAPTER_WEIGHTS
    recorded = info.get("source_sha256")
    if not mismatches and recorded and weights.is_file() and file_sha256(weights) != recorded:
        mismatches.append(
            f"weights: the PEFT adapter was exported from a different {ADAPTER_WEIGHTS} "
            f"(sha256 {recorded[:12]}…, this one {file_sha256(weights)[:12]}…)"
        )
    if mismatches:
        raise AdapterError(
            f"{adapter.path} is not an export of the MLX adapter {mlx_adapter_dir}:\n  "
            + "\n  ".join(mismatches)
        )


# ---- writing --------------------------------------------------------------------------------


def peft_adapter_config(
    config: LoraConfig, base_model: str, revision: str | None = None
) -> dict[str, Any]:
    """adapter_config.json as peft writes it for a plain LoRA on a causal LM."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": revision,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        # Exact names, matched by peft as module-name suffixes, like LoraConfig.target_modules.
        "target_modules": sorted(config.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def base_model_of(document: Mapping[str, Any], override: str | None = None) -> str:
    """The base model id for the PEFT config: the override, else the MLX adapter's metadata,
    else PLaMo 3 2B."""
    return override or document.get("base_model_name_or_path") or DEFAULT_BASE_MODEL


def load_mlx_adapter(
    adapter_dir: str | Path,
    args: ModelArgs | None = None,
    base_dir: str | Path | None = None,
    on_other_base: Callable[[str], None] | None = None,
) -> tuple[LoraConfig, dict[str, Any], dict[str, Any]]:
    """(config, config document, factors) of an MLX adapter, checked: the factors agree with
    the config; given a base config, the adapter was trained on a base of those shapes and
    fits it; given the base directory too, on that very base (see `check_same_base`)."""

    adapter_dir = Path(adapter_dir)
    config, document = read_adapter_config(adapter_dir)
    if args is not None:
        base = str(base_dir or "this base")
        check_base_shapes(document.get("base_fingerprint"), args, str(adapter_dir), base)
        if base_dir is not None:
            check_same_base(
                document.get(BASE_WEIGHTS_KEY),
                checkpoint_weights_fingerprint(base_dir),
                f"the adapter {adapter_dir}",
                base,
                on_other_base,
            )
    weights = read_adapter_weights(adapter_dir)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    check_mlx_adapter(shapes, config, args, str(adapter_dir))
    return config, document, weights


def write_peft_adapter(
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    base_model: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """Write adapter_model.safetensors, adapter_config.json and the provenance file into an
    existing directory (the caller makes the directory atomic). Returns the provenance."""

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config, document, weights = load_mlx_adapter(adapter_dir)
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    base = base_model_of(document, base_model)
    revision = revision or document.get("base_model_revision")
    atomic_save_safetensors(
        out_dir / PEFT_WEIGHTS, mlx_to_peft_weights(weights, dtype), {"format": "pt"}
    )
    atomic_write_json(out_dir / PEFT_CONFIG, peft_adapter_config(config, base, revision))
    info = {
        "format": EXPORT_FORMAT,
        "source_adapter": str(adapter_dir.resolve()),
        "source_sha256": file_sha256(weights_path),
        "base_fingerprint": document.get("base_fingerprint"),
        BASE_WEIGHTS_KEY: document.get(BASE_WEIGHTS_KEY),
        "dtype": dtype,
        "mlx_adapter_config": document,
    }
    atomic_write_json(out_dir / EXPORT_INFO, info)
    return info
