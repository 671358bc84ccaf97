"""The memory plan at the real 2.6B shape: what the default `mlx-plamo train` chooses on 16, 24,
36 and 48 GB Macs, with a bf16 and a 4-bit base, and what one 768-token example needs.

Run from the repository root:
    python -m benchmarks.bench_plan [--steps 50] [--seed 0]

Nothing is trained: this prints `train.memory.Planner`'s predictions (the same code the trainer
runs before step 1) for steps of eight examples of 300-610 tokens (seeded), the length mix of
the study's v2 data. A Mac's budget is MLX's default on Metal, about 75% of its RAM; the 24 GB
row is also shown at `--memory-limit 17`, the figure the issue names.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    add_common_args,
    print_table,
    real_config,
    v2_length_mix_steps,
    write_report,
)
from mlx_plamo3.lora import LoraConfig
from mlx_plamo3.memory import GIB
from mlx_plamo3.model import ModelArgs
from train.batches import PassShape
from train.memory import Planner

NAME = "bench_plan"
MACS_GB = (16, 24, 36, 48)
METAL_SHARE = 0.75
QUANTIZATION = {"group_size": 64, "bits": 4}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=None, work_dir=False)
    parser.add_argument("--steps", type=int, default=50, help="synthetic optimizer steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example lengths")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    steps = v2_length_mix_steps(args.steps, args.seed)
    bases = {"bf16": None, "4bit": QUANTIZATION}

    def planner(base: str, budget_gib: float) -> Planner:
        model_args = ModelArgs.from_dict({**real_config(), "quantization": bases[base]})
        return Planner(model_args, "bfloat16", LoraConfig(), int(budget_gib * GIB), "")

    one_example = []
    for base in bases:
        unlimited = planner(base, 1e6)
        shape = [PassShape(1, 768, 64)]
        one_example.append(
            [
                base,
                unlimited.static_bytes / GIB,
                unlimited.peak_bytes(shape, False) / GIB,
                unlimited.peak_bytes(shape, True) / GIB,
            ]
        )
    print_table(
        ["base", "weights + LoRA state GiB", "no checkpointing GiB", "checkpointing GiB"],
        one_example,
        title="Predicted MLX peak of one 768-token example (64 supervised tokens)",
    )

    rows, records = [], []
    budgets = [(f"{gb} GB", METAL_SHARE * gb) for gb in MACS_GB]
    budgets.insert(2, ("24 GB, --memory-limit 17", 17.0))
    for base in bases:
        for label, budget_gib in budgets:
            plan = planner(base, budget_gib).plan(steps, 768, 64, {})
            rows.append(
                [
                    label,
                    base,
                    budget_gib,
                    plan.max_batch_tokens,
                    "on" if plan.packing else "off",
                    "on" if plan.grad_checkpoint else "off",
                    plan.passes_per_step,
                    plan.predicted_peak_gib,
                    "yes" if plan.fits else "NO",
                ]
            )
            records.append({"mac": label, "base": base, **plan.to_dict()})
    print_table(
        [
            "Mac",
            "base",
            "budget GiB",
            "max_batch_tokens",
            "packing",
            "checkpointing",
            "passes/step",
            "predicted peak GiB",
            "fits",
        ],
        rows,
        title=f"What the default `mlx-plamo train` chooses ({args.steps} steps of 8 examples)",
    )
    write_report(
        args.out,
        NAME,
        {"steps": args.steps, "seed": args.seed, "metal_share": METAL_SHARE},
        {"one_example": one_example, "plans": records},
        ["predictions of train.memory.Planner; nothing was run"],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
