"""Peak memory of one LoRA training step at the full 2.6B shape: bf16 base vs 4-bit base.

Run from the repository root (defaults: the full shape, 24 layers, a 768-token example):
    python -m benchmarks.bench_memory [--bases bf16,4bit] [--layers 24] [--seq-len 768]

Each case runs in its own child process, so its peak resident memory is its own. A case:
1. builds the model at the real 2B width (benchmarks/common.py) with random weights directly
   in memory, layer by layer: bf16, or 4-bit (group 64, linear layers and the tied embedding,
   as `python -m convert --quantize` writes them);
2. applies LoRA with the training recipe (r 16, alpha 32, dropout 0.05, all linear layers) and
   the trainer's training layers (keyed dropout; gradient checkpointing if --grad-checkpoint);
3. runs --steps optimizer steps on one example of --seq-len tokens whose last --supervised
   tokens are supervised (or, with --default-step GIB, on the default command's step: see
   below), with the trainer's own pieces: `train.batches.micro_batches` (the
   padding and packing of a step), `train.loss.weighted_loss` in `nn.value_and_grad`,
   compiled like the trainer, gradient clipping and `train.trainer.make_optimizer` (AdamW).
Measured: MLX's peak allocated memory (`mx.get_peak_memory`, the number that matters for the
GPU on Apple silicon), the process's peak RSS, the weights' memory, and the seconds each phase
took.
--default-step GIB measures what `mlx-plamo train --memory-limit GIB` runs by default: eight
examples of the study's v2 length mix (`benchmarks.common.v2_length_mix_steps`, 50 steps),
batched as `train.memory.Planner` plans them at the FULL depth (24 layers) for that budget
(pass size, packing, checkpointing), and of all those steps' passes the one with the largest
predicted peak. A step's passes run one after another and only the LoRA gradient sum carries
over from one to the next (the plan counts it), so its largest pass sets its peak; running that
pass alone keeps the case short enough for this CPU at 1-2 layers, for `--combine` to fit.
Slow on a CPU: the MLX CPU backend runs bf16 at a few GFLOP/s and 4-bit matmuls at well
under one, so --layers and --seq-len shrink a case to what fits; the table says what ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    add_common_args,
    add_shape_arg,
    blas_note,
    emit_result,
    fit_over_depth,
    gib,
    lora_param_count,
    mlx_device,
    own_peak_rss_bytes,
    param_count,
    parse_result_line,
    print_table,
    python_command,
    real_config,
    reset_own_peak_rss,
    run_child,
    v2_length_mix_steps,
    write_report,
)
from benchmarks.training import lora_training
from mlx_plamo3.lora import LoraConfig
from mlx_plamo3.memory import GIB
from mlx_plamo3.model import Model, ModelArgs
from train.batches import Example, MicroBatch, PassShape, micro_batches, pass_shapes
from train.config import TrainConfig
from train.memory import Planner

NAME = "bench_memory"
BASES = ("bf16", "4bit")
Q_GROUP, Q_BITS = 64, 4
PLAN_STEPS = 50  # steps of the length mix the default step's plan sees, as benchmarks.bench_plan


def build_model(
    config: dict[str, Any], base: str, seed: int = 0, quantization: dict[str, int] | None = None
):
    """The model with random weights, materialized one layer at a time (bounded peak). A 4-bit
    base quantizes the linear layers and the embedding (group 64, or `quantization`) where
    their width allows, as `python -m convert --quantize` does."""
    import mlx.core as mx
    import mlx.nn as nn

    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))  # lazy: nothing is computed yet
    model.set_dtype(mx.bfloat16)
    if base == "4bit":
        quantization = quantization or {"group_size": Q_GROUP, "bits": Q_BITS}
        group = quantization["group_size"]

        def quantizable(path: str, module: nn.Module) -> bool:
            return (
                isinstance(module, (nn.Linear, nn.Embedding))
                and module.weight.shape[-1] % group == 0
            )

        nn.quantize(model, group_size=group, bits=quantization["bits"], class_predicate=quantizable)
    for layer in model.layers:
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    return model


def synthetic_example(seq_len: int, supervised: int, vocab: int, seed: int = 0):
    """One example of seq_len inputs (seq_len + 1 ids) whose last `supervised` targets count."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = tuple(int(i) for i in rng.integers(4, vocab, seq_len + 1))
    mask = tuple([False] * (seq_len + 1 - supervised) + [True] * supervised)
    return Example(row=0, ids=ids, mask=mask)


def default_step_pass(
    config: dict[str, Any], base: str, budget_gib: float, full_depth: int
) -> tuple[MicroBatch, PassShape, bool]:
    """The default command's largest pass (module docstring), planned at `full_depth` layers
    for a budget of `budget_gib`: the pass, its shape and whether it is checkpointed."""
    steps = v2_length_mix_steps(PLAN_STEPS, vocab=config["vocab_size"])
    full = ModelArgs.from_dict(
        {**config, "num_hidden_layers": full_depth, "quantization": quantization_of(base)}
    )
    planner = Planner(full, "bfloat16", LoraConfig(), int(budget_gib * GIB), "")
    defaults = TrainConfig()
    plan = planner.plan(steps, defaults.max_length, defaults.pad_multiple, {})
    layout = {
        "pack_length": defaults.max_length,
        "max_batch_tokens": plan.max_batch_tokens,
        "pad_multiple": defaults.pad_multiple,
        "packing": plan.packing,
    }
    passes = [
        (planner.peak_bytes([shape], plan.grad_checkpoint), step, index, shape)
        for step, examples in enumerate(steps)
        for index, shape in enumerate(pass_shapes(examples, **layout))
    ]
    _, step, index, shape = max(passes, key=lambda p: p[0])
    return micro_batches(steps[step], **layout)[index], shape, plan.grad_checkpoint


def quantization_of(base: str) -> dict[str, int] | None:
    return {"group_size": Q_GROUP, "bits": Q_BITS} if base == "4bit" else None


def worker(args: argparse.Namespace) -> None:
    """One case, in this process; prints its measurements as a BENCH_RESULT line."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    config = real_config(args.layers, args.shape)
    quantization = quantization_of(args.worker)
    if args.default_step:
        full_depth = real_config(shape=args.shape)["num_hidden_layers"]
        batch, shape, grad_checkpoint = default_step_pass(
            config, args.worker, args.default_step, full_depth
        )
    else:
        grad_checkpoint = args.grad_checkpoint
    cfg = TrainConfig(grad_checkpoint=grad_checkpoint, compile=not args.no_compile, max_length=768)
    started = time.perf_counter()
    model = build_model(config, args.worker)
    build_seconds = time.perf_counter() - started
    weights_bytes = int(mx.get_active_memory())

    training = lora_training(model, cfg, args.steps)
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))

    if not args.default_step:
        example = synthetic_example(args.seq_len, args.supervised, config["vocab_size"])
        layout = {
            "pack_length": max(cfg.max_length, args.seq_len),
            "max_batch_tokens": args.seq_len,
            "pad_multiple": cfg.pad_multiple if args.seq_len >= cfg.pad_multiple else 1,
        }
        (batch,) = micro_batches([example], **layout)
        (shape,) = pass_shapes([example], **layout)
    batches = [batch]
    planner = Planner(
        ModelArgs.from_dict({**config, "quantization": quantization}),
        "bfloat16",
        cfg.lora_config(),
        0,
        "",
    )
    predicted = planner.peak_bytes([shape], cfg.grad_checkpoint)
    mx.clear_cache()  # give building's freed buffers back, so RSS shows the steps
    rss_reset = reset_own_peak_rss()
    mx.reset_peak_memory()
    step_seconds, losses = [], []
    for step in range(args.steps):
        start = time.perf_counter()
        loss = training.step(batches, cfg.seed, step)
        step_seconds.append(time.perf_counter() - start)
        losses.append(float(loss.item()))
        print(f"step {step + 1}: {step_seconds[-1]:.1f} s, loss {losses[-1]:.3f}", flush=True)
    emit_result(
        {
            "base": args.worker,
            "layers": config["num_hidden_layers"],
            "seq_len": args.seq_len,
            "default_step_budget_gib": args.default_step,
            "pass_rows": shape.rows,
            "row_width": shape.width,
            "pass_tokens": batch.n_tokens,
            "supervised": batch.n_supervised,
            "params": param_count(config)["total"],
            "trainable": int(trainable),
            "build_seconds": build_seconds,
            "weights_bytes": weights_bytes,
            "peak_bytes": int(mx.get_peak_memory()),
            "predicted_peak_bytes": int(predicted),
            "steps_peak_rss_bytes": own_peak_rss_bytes() if rss_reset else None,
            "step_seconds": step_seconds,
            "losses": losses,
            "grad_checkpoint": cfg.grad_checkpoint,
            "compile": cfg.compile,
            "device": mlx_device(),
        }
    )


def pass_label(case: dict[str, Any]) -> str:
    """How a table names a case's pass: one example of N tokens, or the default step's pass."""
    if not case.get("default_step_budget_gib"):
        return f"{case['seq_len']} tokens"
    return (
        f"default step at {case['default_step_budget_gib']:g} GiB: {case['pass_rows']} x "
        f"{case['row_width']} ({case['pass_tokens']} tokens)"
    )


def fit_layers(cases: Sequence[dict[str, Any]], depth: int) -> list[dict[str, Any]]:
    """Per base and length: MLX peak as fixed + per-layer x layers, fitted (least squares) on the
    cases shallower than `depth`, predicted at `depth`, beside a case measured there if any."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for case in cases:
        # The default step's pass is a shape of its own, apart from --seq-len's.
        seq_len = case["seq_len"] if not case.get("default_step_budget_gib") else 0
        key = (case["base"], seq_len, case.get("grad_checkpoint", False))
        groups.setdefault(key, []).append(case)
    fits = []
    for (base, seq_len, grad_checkpoint), group in sorted(groups.items()):
        shallow = [c for c in group if c["layers"] < depth]
        if len({c["layers"] for c in shallow}) < 2:
            continue
        fixed, slope = fit_over_depth({c["layers"]: c["peak_bytes"] for c in shallow})
        measured = [c for c in group if c["layers"] == depth]
        fits.append(
            {
                "base": base,
                "seq_len": seq_len or group[0]["pass_tokens"],
                "pass": pass_label(group[0]),
                "grad_checkpoint": grad_checkpoint,
                "fitted_on_layers": sorted({c["layers"] for c in shallow}),
                "per_layer_bytes": slope,
                "fixed_bytes": fixed,
                "depth": depth,
                "predicted_peak_bytes": fixed + slope * depth,
                "measured_peak_bytes": measured[0]["peak_bytes"] if measured else None,
                "measured_step_seconds": measured[0]["step_seconds"][0] if measured else None,
            }
        )
    return fits


def print_fits(fits: Sequence[dict[str, Any]]) -> None:
    rows = []
    for fit in fits:
        measured = fit["measured_peak_bytes"]
        rows.append(
            [
                fit["base"],
                fit["pass"],
                ",".join(str(n) for n in fit["fitted_on_layers"]),
                gib(fit["per_layer_bytes"]),
                gib(fit["fixed_bytes"]),
                fit["depth"],
                gib(fit["predicted_peak_bytes"]),
                gib(measured),
                None if measured is None else 100 * (fit["predicted_peak_bytes"] / measured - 1),
            ]
        )
    print_table(
        [
            "base",
            "pass",
            "fitted on layers",
            "per layer GiB",
            "fixed GiB",
            "depth",
            "predicted MLX peak GiB",
            "measured GiB",
            "prediction error %",
        ],
        rows,
        title="MLX peak of one step as fixed + per-layer x layers, fitted on shallow cases",
    )


def combine(paths: Sequence[Path], depth: int, out: Path | None, started: float) -> int:
    """Fit and predict from the cases of earlier runs' JSON reports."""
    cases = []
    for path in paths:
        try:
            cases += json.loads(path.read_text())["results"]["cases"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"{path}: not a {NAME} report ({error})") from error
    fits = fit_layers(cases, depth)
    if not fits:
        raise SystemExit(
            f"nothing to fit: need cases of one base and length at two or more depths below {depth}"
        )
    print_fits(fits)
    write_report(
        out,
        NAME + "_fit",
        {"reports": [str(p) for p in paths], "depth": depth},
        {"fits": fits},
        ["least-squares line through (layers, MLX peak) of the cases below the depth"],
        started,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # A case's peak does not vary from run to run; --steps gives repeated step times.
    add_common_args(parser, NAME, repeats=None, work_dir=False)
    add_shape_arg(parser)
    parser.add_argument("--bases", default="bf16,4bit", help="comma-separated: bf16, 4bit")
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (real: 24)")
    parser.add_argument("--seq-len", type=int, default=768, help="example length in tokens")
    parser.add_argument(
        "--layers-4bit", type=int, default=None, help="layers of the 4-bit case [--layers]"
    )
    parser.add_argument(
        "--seq-len-4bit", type=int, default=None, help="length of the 4-bit case [--seq-len]"
    )
    parser.add_argument("--supervised", type=int, default=48, help="supervised target tokens")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per case")
    parser.add_argument("--grad-checkpoint", action="store_true", help="recompute activations")
    parser.add_argument(
        "--default-step",
        type=float,
        metavar="GIB",
        help="measure the largest pass of the step `mlx-plamo train --memory-limit GIB` runs "
        "by default, batched as planned at the full depth (replaces --seq-len, --supervised "
        "and --grad-checkpoint; module docstring)",
    )
    parser.add_argument("--no-compile", action="store_true", help="do not mx.compile the step")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="REPORT",
        help="run nothing: fit MLX peak against depth over the cases of these earlier reports "
        "and predict it at --layers (for machines too slow to run the full depth)",
    )
    parser.add_argument("--worker", choices=BASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    started = time.perf_counter()
    if args.combine:
        return combine(args.combine, args.layers, args.out, started)
    cases = []
    for base in args.bases.split(","):
        if base not in BASES:
            raise SystemExit(f"unknown base {base!r}; choose from {BASES}")
        layers = args.layers_4bit if base == "4bit" and args.layers_4bit else args.layers
        seq_len = args.seq_len_4bit if base == "4bit" and args.seq_len_4bit else args.seq_len
        command = python_command(
            "-m",
            "benchmarks.bench_memory",
            "--worker",
            base,
            "--shape",
            args.shape,
            "--layers",
            str(layers),
            "--seq-len",
            str(seq_len),
            "--supervised",
            str(min(args.supervised, seq_len - 1)),
            "--steps",
            str(args.steps),
        )
        if args.grad_checkpoint:
            command.append("--grad-checkpoint")
        if args.default_step:
            command += ["--default-step", str(args.default_step)]
        if args.no_compile:
            command.append("--no-compile")
        print(f"running {base}: layers {layers}, seq {seq_len} ...", flush=True)
        child = run_child(command, timeout=args.timeout)
        if child.returncode != 0:
            print(child.output[-4000:])
            raise SystemExit(f"case {base} failed (exit {child.returncode})")
        result = parse_result_line(child.output)
        result["process_seconds"] = child.seconds
        result["peak_rss_bytes"] = child.peak_rss_bytes
        cases.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)

    rows = []
    for case in cases:
        config = real_config(case["layers"], args.shape)
        rows.append(
            [
                case["base"],
                case["layers"],
                pass_label(case),
                "on" if case["grad_checkpoint"] else "off",
                f"{case['params'] / 1e9:.2f}B",
                gib(case["weights_bytes"]),
                gib(case["peak_bytes"]),
                gib(case["predicted_peak_bytes"]),
                case["predicted_peak_bytes"] / case["peak_bytes"],
                gib(case["steps_peak_rss_bytes"]),
                gib(case["peak_rss_bytes"]),
                case["build_seconds"],
                *case["step_seconds"][:1],
                *(case["step_seconds"][-1:] if args.steps > 1 else []),
                case["process_seconds"],
            ]
        )
        assert case["trainable"] == lora_param_count(config), "LoRA parameter count mismatch"
    print()
    print_table(
        [
            "base",
            "layers",
            "pass",
            "checkpointing",
            "params",
            "weights GiB",
            "MLX peak GiB",
            "plan GiB",
            "plan / measured",
            "RSS steps GiB",
            "RSS process GiB",
            "build s",
            "step 1 s",
            *([f"step {args.steps} s"] if args.steps > 1 else []),
            "case s",
        ],
        rows,
        title=f"One LoRA training step, {'2B width' if args.shape == 'real' else 'small shape'}, "
        f"on {mlx_device()} ({blas_note()}; "
        f"r 16, all linear, compiled {'no' if args.no_compile else 'yes'})",
    )
    write_report(
        args.out,
        NAME,
        {
            "bases": args.bases,
            "shape": args.shape,
            "layers": args.layers,
            "seq_len": args.seq_len,
            "layers_4bit": args.layers_4bit,
            "seq_len_4bit": args.seq_len_4bit,
            "supervised": args.supervised,
            "steps": args.steps,
            "grad_checkpoint": args.grad_checkpoint,
            "default_step": args.default_step,
            "compile": not args.no_compile,
            "device": mlx_device(),
            "blas": blas_note(),
        },
        {"cases": cases},
        [
            "MLX peak = mx.get_peak_memory() over the training steps (after the model was "
            "built); weights = mx.get_active_memory() right after building",
            "RSS process = the case process's peak RSS (VmHWM on Linux, else maxrss), building "
            "included; RSS steps = VmHWM reset after building (Linux only), so the steps alone",
            "step 1 includes tracing and compiling the step",
        ],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
