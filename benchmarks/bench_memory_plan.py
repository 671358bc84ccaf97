"""The memory plan against measured peaks: the calibration grid of `train/memory.py`.

Run from the repository root:
    python -m benchmarks.bench_memory_plan [--cases all|quick]

Each case builds a bf16 model of a small width (random weights, in memory), applies LoRA with
the training recipe and runs two optimizer steps of four examples (500, 480, 470 and 450
tokens, 50 supervised each) with the trainer's own pieces (`micro_batches` at the default
packing and a 4096-token pass, `step_functions`, AdamW), in its own process. It prints MLX's
peak (`mx.get_peak_memory()`, weights included) beside `train.memory.Planner.peak_bytes` for
the same passes. The grid varies one width at a time (hidden, heads, intermediate), the depth
(1 and 3 layers) and gradient checkpointing, so the per-token counts and the multipliers in
`train/memory.py` can be read off it; they were set from this table. Measured on the CPU
backend; see BENCHMARKS.md for the run and what differs on Metal.
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

from benchmarks.bench_memory import build_model
from benchmarks.common import (
    add_common_args,
    emit_result,
    parse_result_line,
    print_table,
    python_command,
    real_config,
    run_child,
    write_report,
)
from benchmarks.training import lora_training
from mlx_plamo3.model import ModelArgs
from train.batches import Example, micro_batches, pass_shapes
from train.config import TrainConfig
from train.memory import Planner

NAME = "bench_memory_plan"
LENGTHS = (500, 480, 470, 450)
SUPERVISED = 50
BASE_WIDTHS = {"hidden_size": 512, "num_attention_heads": 4, "intermediate_size": 1024}
VARIANTS = (
    {},
    {"hidden_size": 256},
    {"intermediate_size": 2048},
    {"num_attention_heads": 8},
)
QUICK = [{"layers": 1, "grad_checkpoint": False, "widths": {"hidden_size": 128}}]


def grid() -> list[dict[str, Any]]:
    return [
        {"layers": layers, "grad_checkpoint": checkpoint, "widths": variant}
        for checkpoint in (False, True)
        for layers in (1, 3)
        for variant in VARIANTS
    ]


def case_config(case: dict[str, Any]) -> dict[str, Any]:
    widths = {**BASE_WIDTHS, **case["widths"]}
    return real_config(
        case["layers"],
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=8192,
        **widths,
    )


def measure_step(
    config: dict[str, Any],
    lengths: Sequence[int],
    grad_checkpoint: bool,
    max_batch_tokens: int = 4096,
    quantization: dict[str, int] | None = None,
    supervised: int = SUPERVISED,
) -> tuple[int, int]:
    """(MLX's peak over building the model and two optimizer steps, less what was allocated
    before; the plan's prediction for the same passes), in bytes."""
    import gc

    import mlx.core as mx
    import numpy as np

    cfg = TrainConfig(grad_checkpoint=grad_checkpoint, max_batch_tokens=max_batch_tokens)
    rng = np.random.default_rng(0)
    examples = []
    for row, length in enumerate(lengths):
        ids = tuple(int(i) for i in rng.integers(4, config["vocab_size"], length + 1))
        mask = tuple([False] * (length + 1 - supervised) + [True] * supervised)
        examples.append(Example(row, ids, mask))
    layout = {"pack_length": 768, "max_batch_tokens": max_batch_tokens, "pad_multiple": 64}
    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    model = build_model(config, "4bit" if quantization else "bf16", quantization=quantization)
    training = lora_training(model, cfg, 2)
    for step in range(2):
        training.step(micro_batches(examples, **layout), cfg.seed, step)
    measured = mx.get_peak_memory() - before
    args = ModelArgs.from_dict({**config, "quantization": quantization})
    planner = Planner(args, "bfloat16", cfg.lora_config(), 0, "")
    predicted = planner.peak_bytes(pass_shapes(examples, **layout), cfg.grad_checkpoint)
    return int(measured), int(predicted)


def worker(case: dict[str, Any]) -> None:
    measured, predicted = measure_step(case_config(case), LENGTHS, case["grad_checkpoint"])
    emit_result({"peak_bytes": measured, "predicted_bytes": predicted})


def label(case: dict[str, Any]) -> str:
    widths = {**BASE_WIDTHS, **case["widths"]}
    return (
        f"hidden {widths['hidden_size']}, heads {widths['num_attention_heads']}, "
        f"intermediate {widths['intermediate_size']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=None, work_dir=False)
    parser.add_argument(
        "--cases",
        choices=("all", "quick"),
        default="all",
        help="all: the calibration grid (16 cases, ~15 min on 2 CPU cores); quick: one tiny "
        "case, to check the script runs",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    started = time.perf_counter()
    cases = grid() if args.cases == "all" else QUICK
    rows, results = [], []
    for case in cases:
        child = run_child(
            python_command("-m", "benchmarks.bench_memory_plan", "--worker", json.dumps(case))
        )
        if child.returncode != 0:
            print(child.output[-4000:])
            raise SystemExit(f"case {case} failed (exit {child.returncode})")
        result = {**case, **parse_result_line(child.output)}
        results.append(result)
        ratio = result["predicted_bytes"] / result["peak_bytes"]
        rows.append(
            [
                label(case),
                case["layers"],
                "on" if case["grad_checkpoint"] else "off",
                result["peak_bytes"] / 2**20,
                result["predicted_bytes"] / 2**20,
                ratio,
            ]
        )
        print(json.dumps(result), flush=True)
    print_table(
        ["widths", "layers", "checkpointing", "measured MiB", "plan MiB", "plan / measured"],
        rows,
        title="MLX peak of two optimizer steps (4 examples, 1,900 tokens) vs the memory plan",
    )
    write_report(
        args.out,
        NAME,
        {"cases": args.cases, "lengths": LENGTHS, "supervised": SUPERVISED},
        {"cases": results},
        ["measured: mx.get_peak_memory() over building and two steps, weights included"],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
