"""The memory plan: the peak MLX memory of a training step, predicted before any weight is
loaded, and the budget it has to fit.

Inputs are the model's `config.json` (shapes, and `quantization` when the base is quantized),
the dtype of the base, the LoRA config, and the shapes of the forward passes the data will
really produce (`train.batches.pass_shapes`). The prediction is

    peak = weights + LoRA state + the largest pass's activations

- weights: every tensor of the base, at its stored precision (quantized linears and embedding
  hold `bits` per weight plus a scale and a bias per group in the base dtype);
- LoRA state, float32: parameters, the step's gradients, the gradients of the pass being
  computed, and AdamW's two moments (5 copies);
- a pass of `rows x width` slots (T = rows x width tokens) with `scored` output-head rows:
  the activations every layer keeps for its backward (or, with gradient checkpointing, only each
  layer's input plus one whole layer recomputed), the transient working set of one layer's
  forward and backward, the output head on the scored rows, and the attention masks.

The per-token counts (`mlx_plamo3.memory`) are element counts of the activation dtype, read
off the layer's graph, and the multipliers `SAVED`, `TRANSIENT` and `CHECKPOINTED` were set from
measured peaks of real steps on MLX's CPU backend (`python -m benchmarks.bench_memory_plan`, 16
cases, table in BENCHMARKS.md: every prediction within -3%..+24%; at the 2B width, twelve
steps within -2%..+8%). On Metal the fused attention keeps less, so the plan should err high
there. `tests/test_memory_plan.py` checks predictions against measured peaks at shapes the
calibration did not use.

The budget (`mlx_plamo3.memory.budget`) is what MLX may use on this device unless
`--memory-limit` replaces it; MLX's memory limit is set to it and its cache limit to the
headroom the plan leaves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import mlx.core as mx

from mlx_plamo3.errors import PlamoError
from mlx_plamo3.lora import LoraConfig
from mlx_plamo3.memory import (
    DTYPE_BYTES,
    GIB,
    saved_elements_per_token,
    transient_elements_per_token,
    weight_bytes,
)
from mlx_plamo3.model import ModelArgs, linear_shapes
from train.batches import Example, PassShape, pass_shapes, round_up

LORA_FLOAT32_COPIES = 5  # parameters, step gradients, pass gradients, AdamW m and v

# Multipliers of the graph counts, set from benchmarks/bench_memory_plan.py (module docstring).
SAVED = 1.2
TRANSIENT = 0.7
CHECKPOINTED = 2.0
FIXED_BYTES = 16 * 2**20  # compiled-step bookkeeping, rotary tables, small temporaries
# The output head on the scored rows: per logit, the logits in the base dtype plus float32
# bytes for their float32 copy, the softmax of the cross-entropy, its gradient and the
# gradient's cast. Measured at the 2B width (107,520-entry vocabulary; bench_memory, one row with
# 48 and 600 supervised targets, the default step's 2 x 768 pass with 261): about 18 bytes a
# logit in bf16, held beside a layer's backward working set when nothing is recomputed (the plan
# counted 10 bytes and only the larger of the two, and under-predicted the 600-target row by
# 36%).
HEAD_FLOAT32_BYTES = 16

# The share of the budget a plan may fill: the calibration's predictions ranged from 3% under
# to 24% over the measured peak, and the rest of the process needs some room too.
PLAN_SHARE = 0.90
# Pass sizes the planner may choose, in tokens (4096 was the fixed default before the plan); the
# row width of one `max_length` example is added.
PASS_TOKEN_CHOICES = (16384, 8192, 6144, 4096, 3072, 2048, 1536, 1024)


class MemoryPlanError(PlamoError, RuntimeError):
    """Even the smallest step cannot fit the budget; the message says what to change."""


def lora_parameters(args: ModelArgs, lora: LoraConfig) -> int:
    shapes = linear_shapes(args)
    per_layer = sum(lora.r * (shapes[name][0] + shapes[name][1]) for name in lora.target_modules)
    return args.num_hidden_layers * per_layer


# ---- what one forward pass holds -----------------------------------------------------------


def pass_bytes(args: ModelArgs, shape: PassShape, dtype: str, grad_checkpoint: bool) -> int:
    """Activation memory at the peak of one forward + backward pass."""
    b = DTYPE_BYTES[dtype]
    tokens = shape.slots
    # Each query holds one score per key of its row and head (softmax output kept).
    scores = shape.rows * shape.width * shape.width * args.num_attention_heads
    layer = SAVED * (tokens * saved_elements_per_token(args) + scores) * b
    layers = args.num_hidden_layers
    if grad_checkpoint:
        kept = layers * CHECKPOINTED * tokens * args.hidden_size * b + layer
    else:
        kept = layers * layer
    working = TRANSIENT * (tokens * transient_elements_per_token(args) + 3 * scores) * b
    head = shape.scored * args.vocab_size * (b + HEAD_FLOAT32_BYTES)
    masks = 2 * shape.rows * shape.width * shape.width * 5  # two kinds; bool + int32 temporaries
    # Without checkpointing the last layer's backward starts while the head's buffers are still
    # held (measured at the 2B width); with it, the layers are recomputed after the head is done.
    transient = max(working, head) if grad_checkpoint else working + head
    return int(kept + transient + masks)


# ---- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batching:
    """The settings the plan chooses: they change how a step is computed, never its result."""

    max_batch_tokens: int
    packing: bool
    grad_checkpoint: bool


@dataclass
class MemoryPlan:
    predicted_peak_gib: float
    budget_gib: float
    budget_source: str
    max_batch_tokens: int
    packing: bool
    grad_checkpoint: bool
    weights_gib: float
    lora_state_gib: float
    activations_gib: float
    largest_pass: str  # rows x width of the pass with the largest prediction
    passes_per_step: float  # mean over the run
    chosen: str  # "auto", "given" (every setting explicit) or "mixed"

    @property
    def fits(self) -> bool:
        return self.predicted_peak_gib <= PLAN_SHARE * self.budget_gib

    def batching(self) -> Batching:
        return Batching(self.max_batch_tokens, self.packing, self.grad_checkpoint)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}

    def line(self) -> str:
        checkpointing = "on" if self.grad_checkpoint else "off"
        return (
            f"memory plan: peak ~{gib_text(self.predicted_peak_gib)} of "
            f"{gib_text(self.budget_gib)} ({self.budget_source}; passes <= {self.largest_pass} "
            f"tokens, max_batch_tokens {self.max_batch_tokens}, packing "
            f"{'on' if self.packing else 'off'}, gradient checkpointing {checkpointing}; "
            f"weights {gib_text(self.weights_gib)})"
        )

    def warning(self) -> str | None:
        """What to change when the plan does not fit, else None."""
        if self.fits:
            return None
        return (
            f"warning: the predicted peak ~{gib_text(self.predicted_peak_gib)} is above "
            f"{PLAN_SHARE:.0%} of the budget of {gib_text(self.budget_gib)}; lower "
            "--max-batch-tokens, turn on --grad-checkpoint, or raise --memory-limit (the run "
            "may swap or stop)"
        )


def gib_text(value: float) -> str:
    """GiB with two significant decimals below 10 GiB, one above."""
    return f"{value:.2f} GiB" if value < 10 else f"{value:.1f} GiB"


def apply_limits(plan: MemoryPlan) -> tuple[int, int]:
    """MLX's memory limit at the budget, its buffer cache only in the headroom the plan
    leaves; returns the previous (memory, cache) limits."""
    limit = int(plan.budget_gib * GIB)
    previous_memory = mx.set_memory_limit(limit)
    previous_cache = mx.set_cache_limit(max(0, limit - int(plan.predicted_peak_gib * GIB)))
    return previous_memory, previous_cache


def step_shapes(
    steps: Iterable[Sequence[Example]], max_length: int, batching: Batching, pad_multiple: int
) -> list[list[PassShape]]:
    return [
        pass_shapes(
            examples,
            pack_length=max_length,
            max_batch_tokens=batching.max_batch_tokens,
            pad_multiple=pad_multiple,
            packing=batching.packing,
        )
        for examples in steps
    ]


class Planner:
    """Predicts and chooses; built from the model's config, no weights needed."""

    def __init__(
        self, args: ModelArgs, dtype: str, lora: LoraConfig, budget_bytes: int, source: str
    ):
        self.args, self.dtype, self.lora = args, dtype, lora
        self.budget_bytes, self.budget_source = budget_bytes, source
        self.usable_bytes = int(PLAN_SHARE * budget_bytes)
        self.static_bytes = weight_bytes(args, dtype) + LORA_FLOAT32_COPIES * 4 * lora_parameters(
            args, lora
        )

    def peak_bytes(self, shapes: Iterable[PassShape], grad_checkpoint: bool) -> int:
        largest = max(pass_bytes(self.args, s, self.dtype, grad_checkpoint) for s in shapes)
        return self.static_bytes + FIXED_BYTES + largest

    def check_one_example(self, max_length: int, pad_multiple: int) -> None:
        """Raise MemoryPlanError when one max_length example, checkpointed, cannot fit."""
        width = round_up(max_length - 1, pad_multiple)
        shape = PassShape(1, width, width)
        needed = self.peak_bytes([shape], grad_checkpoint=True)
        if needed > self.usable_bytes:
            raise MemoryPlanError(
                f"one {max_length}-token example needs ~{gib_text(needed / GIB)} even with "
                f"gradient checkpointing, over {PLAN_SHARE:.0%} of the budget of "
                f"{gib_text(self.budget_bytes / GIB)} ({self.budget_source}). Use a 4-bit "
                "base (python -m convert --quantize --q-bits 4), a shorter --max-length, or a "
                "larger --memory-limit."
            )

    def plan(
        self,
        steps: Sequence[Sequence[Example]],
        max_length: int,
        pad_multiple: int,
        given: dict[str, Any],
    ) -> MemoryPlan:
        """The fastest batching predicted to fit; settings in `given` (max_batch_tokens,
        packing, grad_checkpoint) are kept as given. With no fitting choice, the one with the
        smallest predicted peak (the caller warns).

        Fastest, in this order: no recomputation (checkpointing costs a third more compute:
        the frozen base's backward is forward-sized, and it adds one more forward), then the
        largest pass (fewer passes, fewer compiled shapes, fuller devices), then packing
        (fewer rows, less padding; without it the step fitted at 24 layers runs at 0.90x,
        BENCHMARKS.md)."""
        row = round_up(max_length - 1, pad_multiple)
        sizes = sorted({*PASS_TOKEN_CHOICES, row}, reverse=True)
        options = [
            Batching(tokens, packing, checkpoint)
            for tokens in ([given["max_batch_tokens"]] if "max_batch_tokens" in given else sizes)
            for packing in ([given["packing"]] if "packing" in given else [True, False])
            for checkpoint in (
                [given["grad_checkpoint"]] if "grad_checkpoint" in given else [False, True]
            )
        ]
        options.sort(key=lambda o: (o.grad_checkpoint, -o.max_batch_tokens, not o.packing))
        scored = []
        for option in options:
            shapes = step_shapes(steps, max_length, option, pad_multiple)
            flat = [s for step in shapes for s in step]
            peak = self.peak_bytes(flat, option.grad_checkpoint)
            scored.append((peak, option, flat, len(flat) / max(1, len(shapes))))
            if peak <= self.usable_bytes:
                break
        fitting = [s for s in scored if s[0] <= self.usable_bytes]
        peak, option, flat, passes = fitting[0] if fitting else min(scored, key=lambda s: s[0])
        largest = max(
            flat, key=lambda s: pass_bytes(self.args, s, self.dtype, option.grad_checkpoint)
        )
        chosen = "given" if len(given) == 3 else ("auto" if not given else "mixed")
        return MemoryPlan(
            predicted_peak_gib=peak / GIB,
            budget_gib=self.budget_bytes / GIB,
            budget_source=self.budget_source,
            max_batch_tokens=option.max_batch_tokens,
            packing=option.packing,
            grad_checkpoint=option.grad_checkpoint,
            weights_gib=weight_bytes(self.args, self.dtype) / GIB,
            lora_state_gib=LORA_FLOAT32_COPIES * 4 * lora_parameters(self.args, self.lora) / GIB,
            activations_gib=(peak - self.static_bytes) / GIB,
            largest_pass=f"{largest.rows} x {largest.width}",
            passes_per_step=round(passes, 2),
            chosen=chosen,
        )
