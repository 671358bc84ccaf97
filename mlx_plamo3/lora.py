"""LoRA for PLaMo 3 in MLX, stored the way PEFT thinks about it.

A `LoRALinear` takes the place of a linear layer and keeps the base layer's parameters under
their own names (`...qkv_proj.weight`, plus `.scales`/`.biases` when quantized), adding
`lora_a` [in, r] and `lora_b` [r, out]. So checkpoint keys are unchanged and a PEFT export is
a prefix and a transpose. The adapter config stores r and lora_alpha like PEFT; the scale is
derived in one place (`LoraConfig.scale`).

The LoRA branch `scale * dropout(x) @ lora_a @ lora_b` computes in float32 like PEFT (which
casts the input to its float32 adapter weights), but it is one custom function whose backward
keeps only the layer's input `x`, in its own dtype: the dropout mask is drawn again from the
same key and the float32 copy is made again, one layer at a time. Left to autodiff, the branch
would keep the mask, the dropped input and its float32 copy, 7 bytes per input element, for
every LoRA layer until the backward reaches it (`down_proj` alone is 10,240 wide).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlx_plamo3.errors import PlamoError
from mlx_plamo3.io import atomic_save_safetensors, atomic_write_json, read_json, read_safetensors
from mlx_plamo3.loading import weight_files, weight_problems
from mlx_plamo3.messages import print_warning
from mlx_plamo3.model import Model, ModelArgs

ALL_LINEAR = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "mlx-plamo3-lora"
# The key under which adapters, exports and eval records store `base_weights_fingerprint`.
BASE_WEIGHTS_KEY = "base_weights_fingerprint"


class AdapterError(PlamoError, ValueError):
    """An adapter does not fit the model or is malformed."""


class BaseMismatchError(AdapterError):
    """An adapter or records were made on another base of the same shape."""


@dataclass
class LoraConfig:
    r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))

    @property
    def scale(self) -> float:
        """PEFT's scaling: lora_alpha / r (the one place it is computed)."""
        return self.lora_alpha / self.r

    def validate(self) -> None:
        if self.r < 1:
            raise AdapterError(f"LoRA rank r must be >= 1, got {self.r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise AdapterError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        unknown = sorted(set(self.target_modules) - set(ALL_LINEAR))
        if unknown or not self.target_modules:
            raise AdapterError(
                f"target_modules {self.target_modules} must be a non-empty subset of {ALL_LINEAR}"
            )


def dropped(x: mx.array, p: float, key: mx.array) -> mx.array:
    """Inverted dropout as torch's (so PEFT's), its mask a function of `key` and the shape."""
    if p == 0.0:
        return x
    keep = mx.random.bernoulli(1.0 - p, x.shape, key=key)
    return mx.where(keep, x * (1.0 / (1.0 - p)), mx.zeros_like(x))


@functools.cache
def lora_branch(scale: float, p: float) -> Callable[..., mx.array]:
    """`branch(x, lora_a, lora_b, key)`: scale * dropped(x) @ lora_a @ lora_b in float32, cast
    to x's dtype; its backward keeps only x (see the module docstring)."""

    @mx.custom_function
    def branch(x, lora_a, lora_b, key):
        update = (dropped(x, p, key).astype(mx.float32) @ lora_a) @ lora_b
        return (scale * update).astype(x.dtype)

    @branch.vjp
    def branch_vjp(primals, cotangent, output):
        x, lora_a, lora_b, key = primals
        inputs = dropped(x, p, key).astype(mx.float32).reshape(-1, lora_a.shape[0])
        grad_out = scale * cotangent.astype(mx.float32).reshape(-1, lora_b.shape[1])
        grad_b = (inputs @ lora_a).T @ grad_out
        grad_low = grad_out @ lora_b.T
        grad_a = inputs.T @ grad_low
        grad_x = (grad_low @ lora_a.T).reshape(x.shape)
        if p > 0.0:
            # dropped() is linear in x: its transpose keeps and rescales the same elements.
            grad_x = dropped(grad_x, p, key)
        return grad_x.astype(x.dtype), grad_a, grad_b, mx.zeros_like(key)

    return branch


class LoRALinear(nn.Module):
    """y = base(x) + scale * dropout(x) @ lora_a @ lora_b, with the base frozen.

    Dropout acts only in training mode. Its mask is drawn from `dropout_keys()` when the trainer
    sets it (keyed dropout: reproducible and recomputable), else from MLX's global random state.
    """

    def __init__(self, base: nn.Module, config: LoraConfig):
        super().__init__()
        self.weight = base.weight
        self.quantized = isinstance(base, nn.QuantizedLinear)
        if self.quantized:
            self.scales, self.biases = base.scales, base.biases
            self.group_size, self.bits = base.group_size, base.bits
            in_dims = base.weight.shape[1] * 32 // base.bits
        else:
            in_dims = base.weight.shape[1]
        out_dims = base.weight.shape[0]
        self.scale = config.scale
        self.dropout_p = config.lora_dropout
        self.dropout_keys: Callable[[], mx.array] | None = None
        # PEFT's init: A ~ kaiming-uniform (a=sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in)); B = 0.
        bound = 1.0 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(-bound, bound, (in_dims, config.r), dtype=mx.float32)
        self.lora_b = mx.zeros((config.r, out_dims), dtype=mx.float32)

    def base_forward(self, x: mx.array) -> mx.array:
        if self.quantized:
            return mx.quantized_matmul(
                x,
                self.weight,
                self.scales,
                self.biases,
                transpose=True,
                group_size=self.group_size,
                bits=self.bits,
            )
        return x @ self.weight.T

    def __call__(self, x: mx.array) -> mx.array:
        p = self.dropout_p if self.training else 0.0
        if p == 0.0:
            key = mx.zeros((2,), mx.uint32)  # unused
        elif self.dropout_keys is not None:
            key = self.dropout_keys()
        else:
            # A fresh key from the global random state.
            key = mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32)
        return self.base_forward(x) + lora_branch(self.scale, p)(x, self.lora_a, self.lora_b, key)


def target_paths(model: Model, config: LoraConfig) -> list[str]:
    """Module paths whose last name is a target, as PEFT matches a list of names."""
    targets = set(config.target_modules)
    return [
        path
        for path, module in model.named_modules()
        if path.rsplit(".", 1)[-1] in targets
        and isinstance(module, (nn.Linear, nn.QuantizedLinear, LoRALinear))
    ]


def apply_lora(model: Model, config: LoraConfig) -> list[str]:
    """Swap the target linears for LoRA layers, freeze everything but lora_a/lora_b."""
    config.validate()
    modules = dict(model.named_modules())
    paths = sorted(target_paths(model, config))
    if any(isinstance(modules[p], LoRALinear) for p in paths):
        raise AdapterError("the model already carries LoRA layers")
    model.update_modules(tree_unflatten([(p, LoRALinear(modules[p], config)) for p in paths]))
    model.freeze()
    for path in paths:
        dict(model.named_modules())[path].unfreeze(keys=["lora_a", "lora_b"], recurse=False)
    return paths


def lora_parameters(model: Model) -> dict[str, mx.array]:
    return {
        key: value
        for key, value in tree_flatten(model.trainable_parameters())
        if key.endswith((".lora_a", ".lora_b"))
    }


def base_fingerprint(args: ModelArgs) -> str:
    """Hash of the shapes that decide whether an adapter fits a base model."""
    shape = {
        k: getattr(args, k)
        for k in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
        )
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def check_base_shapes(recorded: Any, args: ModelArgs, subject: str, base: str) -> None:
    """Refuse `subject` (an adapter) trained on a base whose shape fingerprint `recorded` is
    not `args`'; a missing `recorded` is not checked (the weights are still shape-checked)."""
    actual = base_fingerprint(args)
    if recorded not in (None, actual):
        raise AdapterError(
            f"{subject} was trained on a base model of other shapes: its base fingerprint is "
            f"{recorded}, {base} has {actual} (hidden size, layers, heads, intermediate size "
            "or vocabulary differ)"
        )


def base_weights_fingerprint(weights: Mapping[str, mx.array]) -> str:
    """Hash of a base's RMSNorm weights rounded to bfloat16: which same-shape base it is.

    Norm weights are trained values (two bases of one shape differ there), small (about 250k
    values at the 2.6B shape), and never quantized, so the bf16 original, an fp32 copy and a
    quantized conversion of one checkpoint share the fingerprint. Keys are checkpoint keys."""
    digest = hashlib.sha256()
    for key in sorted(k for k in weights if k.endswith("norm.weight")):
        rounded = weights[key].astype(mx.bfloat16).view(mx.uint16)
        digest.update(key.encode())
        digest.update(bytes(memoryview(rounded)))
    return digest.hexdigest()[:16]


def model_weights_fingerprint(model: Model) -> str:
    """`base_weights_fingerprint` of a loaded model (LoRA layers keep the base's keys)."""
    return base_weights_fingerprint(dict(tree_flatten(model.parameters())))


def checkpoint_weights_fingerprint(model_dir: str | Path) -> str:
    """`base_weights_fingerprint` of a checkpoint directory, HF or MLX layout, reading only
    the norm tensors (`mx.load` maps the shards lazily)."""
    weights: dict[str, mx.array] = {}
    for file in weight_files(Path(model_dir)):
        weights.update(
            (k, v) for k, v in read_safetensors(file).items() if k.endswith("norm.weight")
        )
    return base_weights_fingerprint(weights)


def check_same_base(
    recorded: Any,
    actual: str,
    subject: str,
    base: str,
    on_other_base: Callable[[str], None] | None = None,
) -> None:
    """Refuse `subject` (an adapter, records) made on a base whose weights fingerprint
    `recorded` is not `actual`'s (the base `base`), unless `on_other_base` is given: then it
    receives the message instead. A missing `recorded` (older files) is not checked."""
    if recorded in (None, actual):
        return
    message = (
        f"{subject} was made on a different base: its base weights fingerprint is "
        f"{recorded}, {base} has {actual}"
    )
    if on_other_base is None:
        raise BaseMismatchError(f"{message}; pass --allow-other-base to use it anyway")
    on_other_base(message)


def warn_other_base(allowed: bool) -> Callable[[str], None] | None:
    """The `on_other_base` a command passes for its --allow-other-base flag: a warning on
    stderr when the user allowed another base, else None (refuse)."""
    return print_warning if allowed else None


def save_adapter(
    model: Model, out_dir: str | Path, config: LoraConfig, metadata: dict[str, Any]
) -> Path:
    """Write adapters.safetensors + adapter_config.json (each atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = lora_parameters(model)
    if not weights:
        raise AdapterError("the model has no LoRA layers to save")
    atomic_save_safetensors(out_dir / ADAPTER_WEIGHTS, weights, {"format": ADAPTER_FORMAT})
    document = {
        "format": ADAPTER_FORMAT,
        **asdict(config),
        "base_fingerprint": base_fingerprint(model.args),
        BASE_WEIGHTS_KEY: model_weights_fingerprint(model),
        **metadata,
    }
    atomic_write_json(out_dir / ADAPTER_CONFIG, document)
    return out_dir


def read_adapter_config(adapter_dir: str | Path) -> tuple[LoraConfig, dict[str, Any]]:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise AdapterError(f"{path} is missing; is {adapter_dir} an adapter directory?")
    document = read_json(path)
    if not isinstance(document, dict) or document.get("format") != ADAPTER_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise AdapterError(f"{path}: format is {found!r}, expected {ADAPTER_FORMAT!r}")
    try:
        config = LoraConfig(
            r=int(document["r"]),
            lora_alpha=float(document["lora_alpha"]),
            lora_dropout=float(document["lora_dropout"]),
            target_modules=[str(t) for t in document["target_modules"]],
        )
    except KeyError as exc:
        raise AdapterError(f"{path}: the key {exc} is missing") from None
    except (TypeError, ValueError) as exc:
        raise AdapterError(
            f"{path}: r, lora_alpha, lora_dropout or target_modules: {exc}"
        ) from None
    try:
        config.validate()
    except AdapterError as exc:
        raise AdapterError(f"{path}: {exc}") from None
    return config, document


def read_adapter_weights(adapter_dir: str | Path) -> dict[str, mx.array]:
    """The LoRA factors saved in `adapter_dir`, or AdapterError naming the file."""
    try:
        return read_safetensors(Path(adapter_dir) / ADAPTER_WEIGHTS)
    except ValueError as exc:
        raise AdapterError(str(exc)) from None


def load_adapter(
    model: Model,
    adapter_dir: str | Path,
    on_other_base: Callable[[str], None] | None = None,
    base: str = "this base model",
) -> LoraConfig:
    """Apply a saved adapter to a freshly loaded base. Refuses one trained on a base of other
    shapes, and one trained on another base of the same shapes unless `on_other_base` is given
    (it then receives the warning; see `check_same_base`)."""
    config, document = read_adapter_config(adapter_dir)
    check_base_shapes(document.get("base_fingerprint"), model.args, str(adapter_dir), base)
    check_same_base(
        document.get(BASE_WEIGHTS_KEY),
        model_weights_fingerprint(model),
        f"the adapter {adapter_dir}",
        base,
        on_other_base,
    )
    apply_lora(model, config)
    weights = read_adapter_weights(adapter_dir)
    wanted = {k: tuple(v.shape) for k, v in lora_parameters(model).items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    problems = weight_problems(wanted, found, "adapter", limit=4)
    if problems:
        raise AdapterError(f"{adapter_dir} does not fit the model: " + "; ".join(problems))
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
    return config
