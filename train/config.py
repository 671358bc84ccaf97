"""The training configuration: the study's recipe as defaults, merged flag > YAML file > default.

Every setting is a field of `TrainConfig` with its help text in the field's metadata, so the
dataclass is the single source of truth: the CLI options are generated from it, a YAML file is
checked against it (an unknown or misspelled key is an error naming the key), and MLflow gets
its fields as the run's params.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from data import resolve_dataset
from eval.harness import STUDY_MAX_NEW_TOKENS
from eval.metric_keys import DEFAULT_EXPERIMENT
from mlx_plamo3.errors import PlamoError
from mlx_plamo3.io import FileFormatError, read_text
from mlx_plamo3.loading import DTYPES
from mlx_plamo3.lora import ALL_LINEAR, AdapterError, LoraConfig
from mlx_plamo3.paths import artifact_dir, default_model_dir
from mlx_plamo3.paths import mlflow_uri as default_mlflow_uri

# Settings that change how a step is computed, never its result; the memory plan fills in those
# not given.
BATCHING = ("max_batch_tokens", "packing", "grad_checkpoint")
# Param names that could carry credentials never reach MLflow (none exists today; a guard).
# Matched as whole name parts, so `max_batch_tokens` is kept and `hf_token` is not.
SECRET_NAME = re.compile(r"(^|_)(token|secret|password|passwd|credentials?|api_?key)(_|$)", re.I)


class ConfigError(PlamoError, ValueError):
    """A training setting is unknown, mistyped or out of range."""


def setting(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field carrying its CLI help (and optional `choices`) in its metadata."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    # ---- what to train on, where to write -------------------------------------------------
    data: str = setting(
        "v2",
        f"Built dataset: a name under the artifacts root (v2 -> {artifact_dir('data', 'v2')}) "
        "or a directory holding train.jsonl and eval.jsonl.",
    )
    model: str | None = setting(
        None, f"Converted MLX model directory [default: {default_model_dir()}]."
    )
    base_model_id: str | None = setting(
        None,
        "Base model id recorded in the adapter config [default: the model config's "
        "_name_or_path, else the model directory].",
    )
    adapter_path: str | None = setting(
        None, f"Output directory of the adapter [default: {artifact_dir('adapters')}/<run name>]."
    )
    run_name: str | None = setting(
        None, "Run name for the adapter directory and MLflow [default: plamo3-<data>-r<r>]."
    )
    resume: bool = setting(
        False,
        "Continue from the last checkpoint under the adapter path (same data order, "
        "optimizer state and schedule).",
    )
    overwrite: bool = setting(
        False, "Start over even if the adapter path already holds checkpoints (deletes them)."
    )
    # ---- LoRA ---------------------------------------------------------------------------
    lora_r: int = setting(16, "LoRA rank r.")
    lora_alpha: float = setting(32.0, "LoRA alpha; the update is scaled by alpha / r (PEFT).")
    lora_dropout: float = setting(0.05, "Dropout on the LoRA input (training only).")
    target_modules: list[str] = field(
        default_factory=lambda: list(ALL_LINEAR),
        metadata={"help": "Linear layers that get LoRA, comma-separated, in every layer."},
    )
    # ---- optimisation ---------------------------------------------------------------------
    learning_rate: float = setting(1e-4, "Peak (initial) AdamW learning rate.")
    lr_end_factor: float = setting(
        0.1, "Linear decay from the learning rate to this fraction of it over the run."
    )
    weight_decay: float = setting(0.01, "AdamW decoupled weight decay (torch's default).")
    adam_beta1: float = setting(0.9, "AdamW beta1.")
    adam_beta2: float = setting(0.999, "AdamW beta2.")
    adam_eps: float = setting(1e-8, "AdamW epsilon.")
    grad_accum: int = setting(
        8,
        "Examples per optimizer step (the study's gradient accumulation at batch size 1); the "
        "step's loss is the mean of their per-example losses.",
    )
    max_grad_norm: float = setting(1.0, "Clip the global gradient norm to this (0: no clip).")
    epochs: int = setting(1, "Passes over the training data.")
    max_length: int = setting(
        768, "Longest example in tokens; longer ones are dropped and counted, never truncated."
    )
    seed: int = setting(0, "Seed of the LoRA init, the data order and the dropout masks.")
    shuffle: bool = setting(True, "Shuffle the examples each epoch (seeded); off: file order.")
    # ---- compute --------------------------------------------------------------------------
    dtype: str = setting(
        "bfloat16",
        "Dtype of the base weights (LoRA parameters stay float32).",
        choices=tuple(DTYPES),
    )
    packing: bool | None = setting(
        None,
        "Pack a step's examples into shared rows with per-example attention and positions; "
        "off: one example per row, padded. [default: chosen by the memory plan]",
    )
    max_batch_tokens: int | None = setting(
        None,
        "Token budget of one forward pass (rows x row length); a step needing more runs "
        "several passes and accumulates their gradients. [default: chosen by the memory plan]",
    )
    pad_multiple: int = setting(
        64, "Row lengths are rounded up to a multiple of this, so few shapes get compiled."
    )
    memory_limit: float | None = setting(
        None,
        "Memory budget in GiB that the step must fit (MLX's memory limit is set to it) "
        "[default: what MLX may use here: Metal's recommended working set on Apple silicon, "
        "else a share of RAM].",
    )
    compile: bool = setting(True, "Compile the training step with mx.compile.")
    grad_checkpoint: bool | None = setting(
        None,
        "Recompute each layer's activations in the backward pass to save memory. "
        "[default: chosen by the memory plan]",
    )
    # ---- checkpoints and checkpoint evals ------------------------------------------------------
    checkpoint_every: int = setting(
        50, "Save a checkpoint every N optimizer steps (and at the end)."
    )
    keep_checkpoints: int = setting(0, "Keep only the last N checkpoints (0: keep all).")
    checkpoint_eval: bool = setting(True, "Run the frozen eval at checkpoints.")
    eval_every: int | None = setting(
        None, "Run the checkpoint eval every N optimizer steps [default: at every checkpoint]."
    )
    eval_limit: int | None = setting(
        None, "Evaluate this many eval cases (call and no-call in proportion) [default: all]."
    )
    eval_batch_size: int = setting(8, "Generation batch size of the checkpoint eval.")
    eval_max_new_tokens: int = setting(
        STUDY_MAX_NEW_TOKENS, "New tokens per eval answer (greedy), as the study."
    )
    # ---- tracking and output -----------------------------------------------------------------
    mlflow: bool = setting(True, "Track the run in MLflow.")
    mlflow_uri: str | None = setting(
        None, f"MLflow tracking URI [default: {default_mlflow_uri()}]."
    )
    experiment: str = setting(DEFAULT_EXPERIMENT, "MLflow experiment name.")
    progress: bool = setting(True, "Show a progress bar.")

    # ---- derived values -----------------------------------------------------------------------

    def lora_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.target_modules),
        )

    def default_run_name(self) -> str:
        return self.run_name or f"plamo3-{Path(self.data).name}-r{self.lora_r}"

    def model_dir(self) -> Path:
        """--model, else the converted base under the artifacts root."""
        return Path(self.model or default_model_dir())

    def adapter_dir(self) -> Path:
        """--adapter-path, else artifacts/adapters/<run name>."""
        return Path(self.adapter_path or artifact_dir("adapters", self.default_run_name()))

    def with_resolved_paths(self) -> TrainConfig:
        """A copy naming the directories a run would use (the dataset once it is built)."""
        try:
            data = str(resolve_dataset(self.data))
        except FileNotFoundError:
            data = self.data
        return replace(
            self,
            data=data,
            model=str(self.model_dir()),
            adapter_path=str(self.adapter_dir()),
            run_name=self.default_run_name(),
        )

    def given_batching(self) -> dict[str, Any]:
        """The batching settings given explicitly (the memory plan chooses the others)."""
        return {name: getattr(self, name) for name in BATCHING if getattr(self, name) is not None}

    def eval_interval(self) -> int:
        return self.eval_every or self.checkpoint_every

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first setting out of range; returns self."""
        positive = (
            "lora_r",
            "grad_accum",
            "epochs",
            "pad_multiple",
            "checkpoint_every",
            "eval_batch_size",
            "eval_max_new_tokens",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "eval_limit", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 when given, got {value}")
        if self.memory_limit is not None and not self.memory_limit > 0:
            raise ConfigError(f"memory_limit must be > 0 GiB when given, got {self.memory_limit}")
        if self.max_length < 2:
            raise ConfigError(
                f"max_length must be >= 2 (a prompt and a target), got {self.max_length}"
            )
        if self.keep_checkpoints < 0:
            raise ConfigError(f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.lora_alpha > 0:
            # alpha / r scales the update: at 0 the adapter trains nothing.
            raise ConfigError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not 0 < self.lr_end_factor <= 1:
            raise ConfigError(f"lr_end_factor must be in (0, 1], got {self.lr_end_factor}")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.adam_eps < 0:
            raise ConfigError("weight_decay, max_grad_norm and adam_eps must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other")
        try:
            self.lora_config().validate()
        except AdapterError as exc:
            raise ConfigError(str(exc)) from None
        return self


def field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def base_type(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of a field annotation."""
    args = typing.get_args(annotation)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """A YAML value checked (and, for numbers written as strings, converted) to the field type."""
    kind, optional = base_type(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: must not be null")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if kind is float:
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept numbers written that way.
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if typing.get_origin(kind) is list:
        return parse_list(name, value)
    raise ConfigError(f"{name}: unsupported setting type {kind}")  # pragma: no cover


def parse_list(name: str, value: Any) -> list[str]:
    """A list of names from a YAML list or a comma-separated string."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(part).strip() for part in value]
    else:
        raise ConfigError(f"{name}: expected a list or a comma-separated string, got {value!r}")
    items = [item for item in items if item]
    if not items:
        raise ConfigError(f"{name}: must name at least one entry")
    return items


def check_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Keys normalised (dashes to underscores); an unknown key is an error naming it."""
    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown setting {key!r}{hint}")
        out[name] = value
    return out


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML file, checked against TrainConfig (not yet merged)."""
    path = Path(path)
    try:
        document = yaml.safe_load(read_text(path))
    except FileFormatError as exc:  # not UTF-8
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(document).__name__}")
    values = check_keys(document, str(path))
    types = field_types()
    return {name: coerce(f"{path}: {name}", value, types[name]) for name, value in values.items()}


def merge_config(
    file_values: dict[str, Any] | None = None, flag_values: dict[str, Any] | None = None
) -> TrainConfig:
    """flag > file > default, validated."""
    merged = {**(file_values or {}), **(flag_values or {})}
    check_keys(merged, "settings")
    return TrainConfig(**merged).validate()


def tracking_params(config: TrainConfig, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Every setting (and `extra` facts) as MLflow params, credential-like names left out."""
    params = {**asdict(config), **(extra or {})}
    out = {}
    for key, value in params.items():
        if SECRET_NAME.search(key):
            continue
        out[key] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return out
