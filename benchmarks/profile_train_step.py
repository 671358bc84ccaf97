"""Where one training step's time goes: the trainer's step at the 2B width, taken apart.

Run from the repository root (OpenBLAS preloaded, as for bench_train):
    python -m benchmarks.profile_train_step [--layers 4] [--max-batch-tokens N] [--no-packing]

Inputs: the same data as `benchmarks.bench_train` (the bundled v2 rows, tokenized with the test
vocabulary; step 2 of 4 examples is profiled, step 1 warms up), a model at the real 2B width
with --layers decoder layers, random weights, float32, LoRA r 16 on all four linear layers with
dropout 0.05, the trainer's own `micro_batches` and `step_functions`.

MLX has no per-op profiler on the CPU, so each cost is timed on its own, compiled, at the shapes
of the step's forward passes (summed over the passes, times the layers where it is per layer):
- step: the whole optimizer step as `Trainer.run_step` computes it;
- layer: one decoder layer's forward and backward (its output, and the gradients of the LoRA
  weights and the input);
- base matmuls: the four frozen projections, forward and the input gradient;
- LoRA branches: the four low-rank branches with their dropout, forward and backward, and the
  same with dropout off (the difference is the cost of drawing the masks);
- attention core: `scaled_dot_product_attention` with the pass's mask, forward and backward;
- MLP activation: silu(gate) * up, forward and backward;
- output head: the tied head on the scored positions and the cross-entropy, forward and backward.
"rest of the layer" is the layer less its timed parts (norms, RoPE, reshapes, residuals).
Medians of --repeats calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import SAMPLE_SOURCE, prepare_data, prepare_model
from benchmarks.common import (
    WorkDir,
    add_common_args,
    add_shape_arg,
    blas_note,
    median,
    mlx_device,
    print_table,
    time_calls,
    write_report,
)
from benchmarks.training import lora_training
from mlx_plamo3.loading import load_model
from mlx_plamo3.lora import LoRALinear, lora_branch
from mlx_plamo3.model import KeyMeta
from train.batches import Example, micro_batches
from train.config import TrainConfig
from train.layers import pass_key
from train.loss import scored_loss

NAME = "profile_train_step"


def profile(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import mlx.core as mx
    import mlx.nn as nn

    model_dir = prepare_model(work, args.layers, args.shape)
    examples = [
        Example(i, tuple(e["ids"]), tuple(e["mask"]))
        for i, e in enumerate(prepare_data(work, model_dir, args))
    ]
    cfg = TrainConfig(
        max_length=args.max_length,
        dtype="float32",
        packing=args.packing,
        max_batch_tokens=args.max_batch_tokens,
        grad_checkpoint=False,
    )
    model = load_model(model_dir, dtype=mx.float32)
    training = lora_training(model, cfg, 2)
    keys, lora = training.keys, cfg.lora_config()
    per_step = args.examples_per_step
    steps = [examples[:per_step], examples[per_step : 2 * per_step]]
    layout = {
        "pack_length": cfg.max_length,
        "max_batch_tokens": cfg.max_batch_tokens,
        "pad_multiple": cfg.pad_multiple,
        "packing": cfg.packing,
    }

    def run_step(index: int) -> None:
        training.step(micro_batches(steps[index], **layout), cfg.seed, index)

    run_step(0)
    step_seconds = median(time_calls(lambda: run_step(1), args.repeats, warmup=1))

    batches = micro_batches(steps[1], **layout)
    layer = model.layers[0]
    costs: dict[str, float] = {}

    def add(name: str, fn: Callable[[], Any], count: int = 1) -> None:
        seconds = median(time_calls(lambda: mx.eval(fn()), args.repeats, warmup=1))
        costs[name] = costs.get(name, 0.0) + seconds * count

    layers = len(model.layers)
    hidden = model.args.hidden_size
    linears = {
        name: module for name, module in layer.named_modules() if isinstance(module, LoRALinear)
    }

    def profile_pass(batch: Any) -> None:
        rows, width = batch.inputs.shape
        positions, valid = mx.array(batch.positions), mx.array(batch.valid)
        segments = mx.array(batch.segments)
        attended = KeyMeta(positions, valid)
        rotaries, masks = model.attention_inputs(positions, attended, attended, segments)
        kind = layer.full_attention
        x = mx.random.normal((rows, width, hidden)) * 0.1
        key = pass_key(cfg.seed, 1, 0)
        mx.eval(x, masks[kind], rotaries[kind].cos)

        def layer_loss(params, x):
            layer.update(params)
            keys.set(key)
            return layer(x, rotaries[kind], masks[kind]).sum()

        layer_grad = mx.compile(mx.value_and_grad(layer_loss, argnums=(0, 1)))
        params = layer.trainable_parameters()
        add("layer", lambda: layer_grad(params, x), layers)
        layer.update(params)  # the traced call left placeholders in the layer

        for module in linears.values():
            a = mx.random.normal((rows, width, module.lora_a.shape[0])) * 0.1
            mx.eval(a)
            weight = module.weight

            def base(a, weight=weight):
                return (a @ weight.T).sum()

            add(
                "base matmuls",
                lambda a=a, base=base: mx.compile(mx.value_and_grad(base))(a),
                layers,
            )
            for p, label in ((cfg.lora_dropout, "LoRA branches"), (0.0, "LoRA, no dropout")):
                branch = lora_branch(lora.scale, p)

                def branch_loss(a, lora_a, lora_b, branch=branch):
                    return branch(a, lora_a, lora_b, key).sum()

                grad = mx.value_and_grad(branch_loss, argnums=(0, 1, 2))
                add(
                    label,
                    lambda a=a, module=module, grad=grad: grad(a, module.lora_a, module.lora_b),
                    layers,
                )

        heads, kv_heads = model.args.num_attention_heads, model.args.num_key_value_heads
        head_dim = model.args.head_dim
        q = mx.random.normal((rows, heads, width, head_dim))
        k = mx.random.normal((rows, kv_heads, width, head_dim))
        v = mx.random.normal((rows, kv_heads, width, head_dim))
        mx.eval(q, k, v)

        def attention(q, k, v):
            return layer.mixer.attend(q, k, v, masks[kind]).sum()

        attention_grad = mx.compile(mx.value_and_grad(attention, argnums=(0, 1, 2)))
        add("attention core", lambda: attention_grad(q, k, v), layers)

        gate_up = mx.random.normal((rows, width, 2 * model.args.intermediate_size))
        mx.eval(gate_up)

        def activation(gate_up):
            gate, up = mx.split(gate_up, 2, axis=-1)
            return (nn.silu(gate) * up).sum()

        add("MLP activation", lambda: mx.compile(mx.value_and_grad(activation))(gate_up), layers)

        targets, weights = mx.array(batch.targets), mx.array(batch.weights)
        scored = mx.array(batch.scored)
        final = mx.random.normal((rows, width, hidden))
        mx.eval(final)

        def head(final):
            return scored_loss(model, final, targets, weights, scored)

        add("output head", lambda: mx.compile(mx.value_and_grad(head))(final))

    for batch in batches:
        profile_pass(batch)

    costs["dropout masks"] = costs["LoRA branches"] - costs.pop("LoRA, no dropout")
    timed_parts = ("base matmuls", "LoRA branches", "attention core", "MLP activation")
    costs["rest of the layer"] = costs["layer"] - sum(costs[n] for n in timed_parts)
    shapes = [list(b.inputs.shape) for b in batches]
    return {"step_seconds": step_seconds, "costs": costs, "pass_shapes": shapes}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=3)
    add_shape_arg(parser)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers at the 2B width")
    parser.add_argument("--examples-per-step", type=int, default=4, help="examples per step")
    parser.add_argument("--max-length", type=int, default=768, help="longest example in tokens")
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=4096,
        help="tokens per forward pass, as the trainer's option",
    )
    parser.add_argument(
        "--no-packing", dest="packing", action="store_false", help="one example per row"
    )
    parser.add_argument("--source", type=Path, default=SAMPLE_SOURCE, help="glaive rows")
    args = parser.parse_args(argv)
    args.steps = 1

    started = time.perf_counter()
    with WorkDir(args.work_dir, "profile_train_") as work:
        result = profile(args, work)
    step = result["step_seconds"]
    order = ["layer", "base matmuls", "LoRA branches", "dropout masks", "attention core"]
    order += ["MLP activation", "rest of the layer", "output head"]
    rows = [["whole step", step, 1.0]]
    for name in order:
        seconds = result["costs"][name]
        label = f"  {name}" if name not in ("layer", "output head") else f"{name}s (all)"
        rows.append([label if name != "output head" else "output head", seconds, seconds / step])
    print()
    print_table(
        ["part", "seconds per step", "share of the step"],
        rows,
        title=f"One training step at the 2B width, {args.layers} layers, float32, passes "
        f"{result['pass_shapes']} (rows x width), on {mlx_device()} ({blas_note()})",
    )
    write_report(
        args.out,
        NAME,
        {
            "layers": args.layers,
            "examples_per_step": args.examples_per_step,
            "max_batch_tokens": args.max_batch_tokens,
            "packing": args.packing,
            "device": mlx_device(),
            "blas": blas_note(),
        },
        result,
        [
            "each part timed alone, compiled, at the step's pass shapes, summed over the "
            "passes and multiplied by the layers; 'dropout masks' = LoRA branches with dropout "
            "less without; 'rest of the layer' = layer less its timed parts",
        ],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
