"""The LoRA training loop: the study's recipe, natively in MLX.

Per optimizer step: the step's examples (fixed up front by `plan_steps`) are packed into one or
more forward passes, each a compiled value-and-grad over the LoRA parameters; their gradients
are summed (the loss weights already average over the step's examples), checked for NaN/inf,
clipped to `max_grad_norm` and applied by AdamW (torch's: decoupled weight decay 0.01, bias
correction) at the learning rate of a linear decay from `learning_rate` to `lr_end_factor` of it
(torch's `LinearLR(1.0, 0.1, total_iters=steps)`, as the study stepped it). Checkpoints every
`checkpoint_every` steps; the frozen eval at checkpoints, logged and printed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map
from tqdm import tqdm

from data import check_no_leak, load_rows, resolve_dataset
from data.call_format import CALL_FORMAT_KEY
from data.store import EVAL_FILE, TRAIN_FILE, dataset_call_format, eval_files
from eval.harness import run_eval
from eval.metric_keys import EXAMPLES_SEEN, LOSS, checkpoint_eval_metrics
from mlx_plamo3.errors import PlamoError
from mlx_plamo3.io import atomic_write_json, file_sha256
from mlx_plamo3.loading import DTYPES, CheckpointError, load_model, read_config, read_model_args
from mlx_plamo3.lora import ADAPTER_CONFIG, apply_lora, save_adapter
from mlx_plamo3.memory import budget
from mlx_plamo3.paths import mlflow_uri
from mlx_plamo3.tokenizer import Plamo3Tokenizer
from train.batches import Encoded, encode_rows, micro_batches, plan_steps
from train.checkpoints import (
    EVAL_DIR,
    checkpoint_path,
    eval_records_path,
    latest_checkpoint,
    load_checkpoint,
    prepare_adapter_dir,
    prune_checkpoints,
    read_trainer_state,
    save_checkpoint,
)
from train.config import TrainConfig, tracking_params
from train.distributed import join
from train.layers import (
    ForwardKeys,
    prepare_for_training,
)
from train.memory import MemoryPlan, MemoryPlanError, Planner, apply_limits
from train.step import accumulate_passes, global_norm, make_optimizer, step_functions
from train.tracking import Tracker, make_tracker

# Settings a resumed run must share with the checkpoint, or the "same run" is another run.
RESUME_KEYS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "learning_rate",
    "lr_end_factor",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_eps",
    "grad_accum",
    "max_grad_norm",
    "epochs",
    "max_length",
    "seed",
    "shuffle",
    "dtype",
)


class TrainError(PlamoError, RuntimeError):
    """The run cannot start or continue; the message says why and what to do."""


class NonFiniteLossError(TrainError):
    """A step's loss or gradient was NaN or inf; the update was not applied."""


@dataclass
class StepStats:
    step: int  # optimizer steps done, 1-based
    total_steps: int
    loss: float  # mean of the step's per-example losses
    lr: float  # learning rate this step used
    grad_norm: float  # before clipping
    examples: int
    examples_seen: int
    tokens: int  # real (non-padding) input tokens of the step
    supervised_tokens: int
    padding_tokens: int
    forward_passes: int
    seconds: float
    elapsed_minutes: float
    peak_memory_gb: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def supervised_tokens_per_second(self) -> float:
        return self.supervised_tokens / self.seconds if self.seconds > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        """MLflow metrics; loss, lr, examples_seen and minutes_elapsed are the study's names."""
        return {
            LOSS: self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            EXAMPLES_SEEN: self.examples_seen,
            "minutes_elapsed": self.elapsed_minutes,
            "tokens_per_second": self.tokens_per_second,
            "supervised_tokens_per_second": self.supervised_tokens_per_second,
            "padding_fraction": self.padding_tokens / max(1, self.tokens + self.padding_tokens),
            "peak_memory_gb": self.peak_memory_gb,
        }


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    total_steps: int
    train_examples: int
    dropped_too_long: int
    history: list[StepStats] = field(default_factory=list)  # steps run by this call
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)  # step -> eval summary
    checkpoints: list[Path] = field(default_factory=list)
    run_id: str | None = None

    @property
    def tokens_per_second(self) -> float:
        seconds = sum(s.seconds for s in self.history)
        return sum(s.tokens for s in self.history) / seconds if seconds else 0.0

    @property
    def supervised_tokens_per_second(self) -> float:
        seconds = sum(s.seconds for s in self.history)
        return sum(s.supervised_tokens for s in self.history) / seconds if seconds else 0.0


# ---- small pure helpers ----------------------------------------------------------------------


def data_recipe(data_dir: Path) -> str:
    """The recipe in the dataset's manifest.json, else the directory's name."""
    try:
        return str(json.loads((data_dir / "manifest.json").read_text())["recipe"])
    except (OSError, ValueError, KeyError, TypeError):
        return data_dir.name


def base_model_info(model_dir: Path, override: str | None) -> tuple[str, str | None]:
    """(base model id, revision) from the model's config.json, as far as it records them."""
    try:
        config = read_config(model_dir)
    except (CheckpointError, OSError):
        config = {}
    name = override or config.get("_name_or_path") or str(model_dir)
    revision = config.get("_commit_hash") or config.get("revision")
    return str(name), revision


def eval_subset(rows: Sequence[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` eval rows keeping call and no-call in proportion (at least one of
    each when both exist and the limit allows), in file order."""
    rows = list(rows)
    if limit is None or limit >= len(rows):
        return rows
    calls = [r for r in rows if r.get("kind") == "call"]
    others = [r for r in rows if r.get("kind") != "call"]
    n_call = round(limit * len(calls) / len(rows))
    if calls and others and limit >= 2:
        n_call = min(max(n_call, 1), limit - 1)
    chosen = {id(r) for r in calls[:n_call] + others[: limit - n_call]}
    return [r for r in rows if id(r) in chosen]


def format_eval(step: int, total: int, summary: dict[str, Any]) -> str:
    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    line = (
        f"step {step}/{total} eval ({summary.get('n_call')} call + {summary.get('n_nocall')} "
        f"no-call): parse {pct(summary.get('parse_rate'))}  "
        f"func-name {pct(summary.get('func_name_acc'))}  "
        f"args-exact {pct(summary.get('args_exact_match'))}  "
        f"false-call {pct(summary.get('false_call_rate'))}"
    )
    strict = summary.get("strict")
    if isinstance(strict, dict):
        line += (
            f"  | strict: func-name {pct(strict.get('func_name_acc'))}  "
            f"args-exact {pct(strict.get('args_exact_match'))}  "
            f"false-call {pct(strict.get('false_call_rate'))}"
        )
    return line


def echo(message: str) -> None:
    tqdm.write(message)


# ---- the trainer ----------------------------------------------------------------------------


class Trainer:
    """Set up with `Trainer(config)`, run with `.run()`; `train()` does both."""

    def __init__(
        self,
        config: TrainConfig,
        on_step: Callable[[StepStats], None] | None = None,
        log: Callable[[str], None] = echo,
        plan_only: bool = False,
    ) -> None:
        """Everything up to step 1. The memory plan comes first: a `max_length` example that
        cannot fit stops the run before any data or weights are read. With `plan_only`, stop
        after the plan (no weights loaded, nothing written)."""
        self.config = config.validate()
        self.on_step = on_step
        self.ranks = join()
        # One voice for the run: the other ranks train quietly.
        self.log = log if self.ranks.is_main else (lambda _message: None)
        self._setup_planner()
        self._setup_data()
        if plan_only:
            self.resume_from = latest_checkpoint(self._adapter_dir()) if config.resume else None
        else:
            self._setup_output()
        self._setup_examples()
        self._setup_memory_plan()
        if plan_only:
            return
        self._setup_model()
        self._setup_optimizer()

    # ---- setup ----------------------------------------------------------------------------

    def _setup_planner(self) -> None:
        cfg = self.config
        self.model_dir = cfg.model_dir()
        if not self.model_dir.is_dir():
            raise TrainError(
                f"no model at {self.model_dir}; convert one with `python -m convert --hf-path "
                f"pfnet/plamo-3-nict-2b-base --mlx-path {self.model_dir}` or pass --model"
            )
        try:
            args = read_model_args(self.model_dir)
        except (CheckpointError, ValueError) as exc:
            raise TrainError(str(exc)) from None
        limit, source = budget(cfg.memory_limit)
        self.planner = Planner(args, cfg.dtype, cfg.lora_config(), limit, source)
        try:
            self.planner.check_one_example(cfg.max_length, cfg.pad_multiple)
        except MemoryPlanError as exc:
            raise TrainError(str(exc)) from None

    def _setup_data(self) -> None:

        cfg = self.config
        try:
            self.data_dir = Path(resolve_dataset(cfg.data))
        except FileNotFoundError as exc:
            raise TrainError(str(exc)) from None
        self.train_file = self.data_dir / TRAIN_FILE
        self.train_rows = load_rows(self.train_file)
        if not self.train_rows:
            raise TrainError(f"{self.train_file} is empty: there is nothing to train on")
        eval_paths = eval_files(self.data_dir)
        eval_by_file = {path.name: load_rows(path) for path in eval_paths}
        # The leakage guard (trap 1), before anything is trained: every eval file counts.
        check_no_leak(self.train_rows, [r for rows in eval_by_file.values() for r in rows])
        self.eval_rows = eval_by_file.get(EVAL_FILE, [])
        if cfg.checkpoint_eval and not self.eval_rows:
            raise TrainError(
                f"{self.data_dir} has no {EVAL_FILE} for the checkpoint eval "
                "(pass --no-checkpoint-eval to train without it)"
            )
        self.data_hash = file_sha256(self.train_file)
        # The checkpoint evals' questions: a resumed run must keep them, or its curve mixes sets.
        eval_file = self.data_dir / EVAL_FILE
        self.eval_data_hash = file_sha256(eval_file) if eval_file.is_file() else None
        self.recipe = data_recipe(self.data_dir)
        self.call_format = dataset_call_format(self.data_dir)

    def _adapter_dir(self) -> Path:
        self.run_name = self.config.default_run_name()
        return self.config.adapter_dir()

    def _setup_output(self) -> None:
        self.adapter_dir = self._adapter_dir()
        if self.ranks.is_main:
            self.resume_from = prepare_adapter_dir(
                self.adapter_dir, self.config.overwrite, self.config.resume
            )
        else:  # rank 0 alone applies the folder policy and writes
            self.resume_from = latest_checkpoint(self.adapter_dir) if self.config.resume else None
        if self.config.resume and self.resume_from is None:
            self.log(f"no checkpoint under {self.adapter_dir}; starting from step 0")

    def _setup_examples(self) -> None:

        cfg = self.config
        self.base_model_id, self.base_revision = base_model_info(self.model_dir, cfg.base_model_id)
        self.tokenizer = Plamo3Tokenizer.from_pretrained(self.model_dir)
        self.encoded: Encoded = encode_rows(self.train_rows, self.tokenizer, cfg.max_length)
        if not self.encoded.examples:
            raise TrainError(
                f"all {len(self.train_rows)} training rows are longer than max_length "
                f"{cfg.max_length} tokens"
            )
        self.plan = plan_steps(
            len(self.encoded.examples), cfg.grad_accum, cfg.epochs, cfg.seed, cfg.shuffle
        )
        self.pad_id = self.tokenizer.pad_token_id or 0

    def _setup_memory_plan(self) -> None:
        """Choose the batching settings not given (a resumed run keeps its own) and log the
        plan; the config holds the chosen values from here on."""
        cfg = self.config
        given = cfg.given_batching()
        if self.resume_from is not None:
            given = {**read_trainer_state(self.resume_from).get("batching", {}), **given}
        # Per rank: each plans the passes of its own share of every step.
        shares = [self.ranks.share([self.encoded.examples[i] for i in step]) for step in self.plan]
        steps = [share for share in shares if share]
        plan = self.planner.plan(steps, cfg.max_length, cfg.pad_multiple, given)
        self.memory_plan: MemoryPlan = plan
        self.config = replace(cfg, **asdict(plan.batching()))
        self.log(plan.line())
        warning = plan.warning()
        if warning:
            self.log(warning)

    def _setup_model(self) -> None:

        cfg = self.config
        self.model = load_model(self.model_dir, dtype=DTYPES[cfg.dtype])
        mx.random.seed(cfg.seed)  # the LoRA init
        self.lora_config = cfg.lora_config()
        apply_lora(self.model, self.lora_config)
        self.forward_keys: ForwardKeys = prepare_for_training(self.model, cfg.lora_dropout)

    def _setup_optimizer(self) -> None:
        cfg = self.config
        self.total_steps = len(self.plan)
        self.optimizer = make_optimizer(cfg, self.total_steps)
        self.optimizer.init(self.model.trainable_parameters())
        self.state: dict[str, Any] = {
            "examples_seen": 0,
            "tokens_seen": 0,
            "supervised_tokens_seen": 0,
            "elapsed_seconds": 0.0,
            "mlflow_run_id": None,
        }
        self.start_step = 0
        if self.resume_from is not None:
            saved = load_checkpoint(self.resume_from, self.model, self.optimizer)
            self._check_resumable(saved)
            self.start_step = int(saved["step"])
            self.state.update({k: saved[k] for k in self.state if k in saved})
            self.log(
                f"resuming from {self.resume_from} (step {self.start_step}/{self.total_steps})"
            )
        self._compile()

    def resume_fingerprint(self) -> dict[str, Any]:
        settings = asdict(self.config)
        return {
            **{k: settings[k] for k in RESUME_KEYS},
            "data_hash": self.data_hash,
            "eval_data_hash": self.eval_data_hash,
            "train_examples": len(self.encoded.examples),
            "total_steps": self.total_steps,
        }

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        before = saved.get("fingerprint", {})
        now = json.loads(json.dumps(self.resume_fingerprint()))
        # Checkpoints written before eval_data_hash was recorded resume as before.
        unrecorded = {"eval_data_hash"} - before.keys()
        differ = sorted(k for k in now if k not in unrecorded and before.get(k) != now[k])
        if differ:
            detail = ", ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in differ)
            raise TrainError(
                f"cannot resume {self.resume_from}: it was trained with other settings or data "
                f"({detail}); use the same settings, or --overwrite to start over"
            )

    def _compile(self) -> None:
        self.loss_and_grad, self.apply_update = step_functions(
            self.model, self.optimizer, self.forward_keys, self.config
        )

    # ---- metadata ----------------------------------------------------------------------------

    def adapter_metadata(self, step: int) -> dict[str, Any]:
        cfg = self.config
        return {
            "base_model_name_or_path": self.base_model_id,
            "base_model_revision": self.base_revision,
            "base_model_path": str(self.model_dir.resolve()),
            "data_recipe": self.recipe,
            CALL_FORMAT_KEY: self.call_format,
            "data_hash": self.data_hash,
            "data_dir": str(self.data_dir.resolve()),
            "train_examples": len(self.encoded.examples),
            "dropped_too_long": len(self.encoded.dropped_too_long),
            "max_length": cfg.max_length,
            "steps": step,
            "total_steps": self.total_steps,
            "epochs": cfg.epochs,
            "examples_per_step": cfg.grad_accum,
            "learning_rate": cfg.learning_rate,
            "lr_end_factor": cfg.lr_end_factor,
            "seed": cfg.seed,
            "dtype": cfg.dtype,
            "memory_plan": self.memory_plan.to_dict(),
            "trainer": "mlx-plamo3 train",
            "world_size": self.ranks.size,
        }

    def run_params(self) -> dict[str, str]:
        trainable = sum(v.size for _, v in tree_flatten(self.model.trainable_parameters()))
        return tracking_params(
            self.config,
            {
                "run_name": self.run_name,
                "model_dir": str(self.model_dir),
                "base_model_name_or_path": self.base_model_id,
                "base_model_revision": self.base_revision,
                "adapter_dir": str(self.adapter_dir),
                "data_dir": str(self.data_dir),
                "data_recipe": self.recipe,
                "data_hash": self.data_hash,
                "world_size": self.ranks.size,
                "train_examples": len(self.encoded.examples),
                "dropped_too_long": len(self.encoded.dropped_too_long),
                "train_rows": len(self.train_rows),
                "eval_rows": len(eval_subset(self.eval_rows, self.config.eval_limit)),
                "total_steps": self.total_steps,
                "lora_scale": self.lora_config.scale,
                "trainable_parameters": trainable,
                "mlx_version": mx.__version__,
                "device": str(mx.default_device()),
                **{f"memory_plan_{k}": v for k, v in self.memory_plan.to_dict().items()},
            },
        )

    # ---- one step ---------------------------------------------------------------------------

    def run_step(self, step_index: int) -> StepStats:
        """Compute and apply optimizer step `step_index` (0-based); raises on NaN/inf."""
        cfg = self.config
        step_examples = [self.encoded.examples[i] for i in self.plan[step_index]]
        examples = self.ranks.share(step_examples)
        batches = micro_batches(
            examples,
            pack_length=cfg.max_length,
            max_batch_tokens=cfg.max_batch_tokens,
            pad_multiple=cfg.pad_multiple,
            packing=cfg.packing,
            pad_id=self.pad_id,
            step_examples=len(step_examples),
        )
        started = time.perf_counter()
        if batches:
            loss, grads = accumulate_passes(self.loss_and_grad, batches, cfg.seed, step_index)
        else:  # a rank left without examples in a short last step adds nothing
            loss = mx.array(0.0)
            grads = tree_map(mx.zeros_like, self.model.trainable_parameters())
        counts = mx.array(
            [
                sum(b.n_tokens for b in batches),
                sum(b.n_supervised for b in batches),
                sum(b.n_padding for b in batches),
                len(batches),
            ]
        )
        loss, grads, counts = self.ranks.sum((loss, grads, counts))
        tokens, supervised, padding, passes = (int(c) for c in counts.tolist())
        norm = global_norm(grads)
        mx.eval(norm)
        loss_value, norm_value = float(loss.item()), float(norm.item())
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            last = latest_checkpoint(self.adapter_dir)
            rows = sorted(e.row + 1 for e in step_examples)
            raise NonFiniteLossError(
                f"step {step_index + 1}: loss {loss_value}, gradient norm {norm_value}; stopped "
                f"before applying the update (train.jsonl lines {rows[:8]}). Last good "
                f"checkpoint: {last or 'none saved yet'}"
            )
        self.apply_update(grads)
        mx.eval(self.model.trainable_parameters(), self.optimizer.state)
        seconds = time.perf_counter() - started

        self.state["examples_seen"] += len(step_examples)
        self.state["tokens_seen"] += tokens
        self.state["supervised_tokens_seen"] += supervised
        return StepStats(
            step=step_index + 1,
            total_steps=self.total_steps,
            loss=loss_value,
            lr=float(self.optimizer.learning_rate.item()),  # the rate this update used
            grad_norm=norm_value,
            examples=len(step_examples),
            examples_seen=self.state["examples_seen"],
            tokens=tokens,
            supervised_tokens=supervised,
            padding_tokens=padding,
            forward_passes=passes,
            seconds=seconds,
            elapsed_minutes=(self.state["elapsed_seconds"] + self._session_seconds()) / 60,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
        )

    def _session_seconds(self) -> float:
        return time.perf_counter() - self._session_start

    # ---- checkpoints and evals -----------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        return {
            **self.state,
            "elapsed_seconds": self.state["elapsed_seconds"] + self._session_seconds(),
            "total_steps": self.total_steps,
            "run_name": self.run_name,
            "fingerprint": self.resume_fingerprint(),
            "batching": asdict(self.memory_plan.batching()),
        }

    def save_checkpoint(self, step: int) -> Path:
        path = save_checkpoint(
            self.adapter_dir,
            step,
            self.model,
            self.lora_config,
            self.optimizer,
            self.adapter_metadata(step),
            self.trainer_state(),
        )
        prune_checkpoints(self.adapter_dir, self.config.keep_checkpoints)
        return path

    def checkpoint_eval(self, step: int) -> tuple[dict[str, Any], Path]:
        """The frozen eval (or its subset) on the current adapter: its summary, and the path
        of its per-question records (under evals/)."""

        cfg = self.config
        rows = eval_subset(self.eval_rows, cfg.eval_limit)
        self.model.eval()
        try:
            records = run_eval(
                self.model,
                self.tokenizer,
                rows,
                condition=f"{self.run_name}@step-{step}",
                batch_size=cfg.eval_batch_size,
                max_new_tokens=cfg.eval_max_new_tokens,
                memory_available=self.planner.budget_bytes - mx.get_active_memory(),
            )
        finally:
            self.model.train()
        path = eval_records_path(self.adapter_dir, step)
        atomic_write_json(path, records)
        return records["summary"], path

    def due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.total_steps

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg = self.config
        result = TrainResult(
            adapter_dir=self.adapter_dir,
            steps=self.start_step,
            total_steps=self.total_steps,
            train_examples=len(self.encoded.examples),
            dropped_too_long=len(self.encoded.dropped_too_long),
        )
        dropped = len(self.encoded.dropped_too_long)
        self.log(
            f"training on {len(self.encoded.examples)}/{len(self.train_rows)} examples "
            f"({dropped} dropped: longer than {cfg.max_length} tokens), {self.total_steps} "
            f"steps of {cfg.grad_accum} examples, adapter -> {self.adapter_dir}"
        )
        tracker = make_tracker(
            cfg.mlflow and self.ranks.is_main,
            cfg.mlflow_uri or mlflow_uri(),
            cfg.experiment,
            self.run_name,
            self.state.get("mlflow_run_id"),
        )
        if tracker.run_id != self.state.get("mlflow_run_id"):
            tracker.log_params(self.run_params())
        self.state["mlflow_run_id"] = tracker.run_id
        result.run_id = tracker.run_id
        self._session_start = time.perf_counter()
        limits = apply_limits(self.memory_plan)
        mx.reset_peak_memory()
        self.model.train()
        status = "FAILED"
        bar = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            desc="train",
            unit="step",
            disable=not (cfg.progress and self.ranks.is_main),
            dynamic_ncols=True,
        )
        try:
            if self.ranks.is_main:
                self._maybe_redo_eval(tracker, result)
            for step_index in range(self.start_step, self.total_steps):
                stats = self.run_step(step_index)
                result.history.append(stats)
                result.steps = stats.step
                tracker.log_metrics(stats.metrics(), step=stats.step)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{stats.loss:.4f}",
                    tok_s=f"{stats.tokens_per_second:,.0f}",
                    lr=f"{stats.lr:.2e}",
                )
                if self.ranks.is_main and self.due(stats.step, cfg.checkpoint_every):
                    result.checkpoints.append(self.save_checkpoint(stats.step))
                if (
                    self.ranks.is_main
                    and cfg.checkpoint_eval
                    and self.due(stats.step, cfg.eval_interval())
                ):
                    self._run_eval(stats.step, tracker, result)
                if self.on_step is not None:
                    self.on_step(stats)
            if self.ranks.is_main:
                self._finish(tracker, result)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            last = latest_checkpoint(self.adapter_dir)
            self.log(f"interrupted; resume with --resume (last checkpoint: {last or 'none'})")
            raise
        finally:
            bar.close()
            tracker.end(status)
            mx.set_memory_limit(limits[0])
            mx.set_cache_limit(limits[1])
        return result

    def _run_eval(self, step: int, tracker: Tracker, result: TrainResult) -> None:
        summary, records = self.checkpoint_eval(step)
        result.evals[step] = summary
        tracker.log_metrics(checkpoint_eval_metrics(summary), step=step)
        tracker.log_artifact(records, EVAL_DIR)
        self.log(format_eval(step, self.total_steps, summary))

    def _maybe_redo_eval(self, tracker: Tracker, result: TrainResult) -> None:
        """A run killed during a checkpoint eval evaluates that checkpoint on resume."""
        step = self.start_step
        if not (
            self.config.checkpoint_eval and step > 0 and self.due(step, self.config.eval_interval())
        ):
            return
        if not eval_records_path(self.adapter_dir, step).is_file():
            self._run_eval(step, tracker, result)

    def _finish(self, tracker: Tracker, result: TrainResult) -> None:
        step = result.steps
        if latest_checkpoint(self.adapter_dir) != checkpoint_path(self.adapter_dir, step):
            result.checkpoints.append(self.save_checkpoint(step))
        save_adapter(self.model, self.adapter_dir, self.lora_config, self.adapter_metadata(step))
        tracker.log_artifact(self.adapter_dir / ADAPTER_CONFIG)
        if result.history:
            tracker.log_metrics(
                {
                    "run_tokens_per_second": result.tokens_per_second,
                    "run_supervised_tokens_per_second": result.supervised_tokens_per_second,
                },
                step=step,
            )
        self.log(
            f"adapter saved to {self.adapter_dir} ({step} steps"
            + (f", {result.tokens_per_second:,.0f} tokens/s" if result.history else "")
            + ")"
        )


def memory_plan(config: TrainConfig, log: Callable[[str], None] = echo) -> MemoryPlan:
    """The plan `train(config)` would follow, from config.json, tokenizer and data alone."""
    return Trainer(config, log=log, plan_only=True).memory_plan


def train(
    config: TrainConfig,
    on_step: Callable[[StepStats], None] | None = None,
    log: Callable[[str], None] = echo,
) -> TrainResult:
    """Train (or resume) the tool-calling LoRA described by `config`."""
    return Trainer(config, on_step=on_step, log=log).run()
