"""PEFT export of a LoRA adapter at the real 2B shapes (random factors): time and file sizes.

Run from the repository root:
    python -m benchmarks.bench_export [--repeats 3] [--rank 16]

An MLX adapter (r=16 on all four linear layers of all 24 layers, random non-zero factors) is
written in the trainer's format, then `adapters.export.export_peft` runs for each export dtype;
the median wall time over repeats and the size of adapter_model.safetensors are reported, with
the time to read the export back and check it fits the base config.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.export import export_peft
from benchmarks.common import (
    WorkDir,
    add_common_args,
    add_shape_arg,
    median,
    print_table,
    real_config,
    shape_label,
    summary,
    write_report,
)
from mlx_plamo3.io import atomic_save_safetensors, atomic_write_json
from mlx_plamo3.lora import (
    ADAPTER_CONFIG,
    ADAPTER_FORMAT,
    ADAPTER_WEIGHTS,
    LoraConfig,
    base_fingerprint,
)
from mlx_plamo3.model import ModelArgs
from mlx_plamo3.peft import (
    DEFAULT_BASE_MODEL,
    EXPORT_DTYPES,
    PEFT_WEIGHTS,
    check_peft_fits_base,
    expected_mlx_shapes,
    read_peft_adapter,
)

NAME = "bench_export"


def write_random_adapter(out_dir: Path, config: dict, rank: int) -> int:
    """An MLX adapter in the trainer's format with random factors; returns its parameters."""
    import mlx.core as mx

    args = ModelArgs.from_dict(config)
    lora = LoraConfig(r=rank)
    shapes = expected_mlx_shapes(args, rank, lora.target_modules)
    mx.random.seed(0)
    weights = {key: mx.random.normal(shape) * 0.01 for key, shape in shapes.items()}
    atomic_save_safetensors(out_dir / ADAPTER_WEIGHTS, weights, {"format": ADAPTER_FORMAT})
    atomic_write_json(
        out_dir / ADAPTER_CONFIG,
        {
            "format": ADAPTER_FORMAT,
            "r": lora.r,
            "lora_alpha": lora.lora_alpha,
            "lora_dropout": lora.lora_dropout,
            "target_modules": lora.target_modules,
            "base_fingerprint": base_fingerprint(args),
            "base_model_name_or_path": DEFAULT_BASE_MODEL,
        },
    )
    return sum(int(v.size) for v in weights.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, NAME, repeats=3)
    add_shape_arg(parser)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    config = real_config(shape=args.shape)
    rows, results = [], {}
    with WorkDir(args.work_dir, "bench-export-") as work:
        mlx_dir = work / "mlx-adapter"
        params = write_random_adapter(mlx_dir, config, args.rank)
        for dtype in EXPORT_DTYPES:
            out = work / f"peft-{dtype}"
            seconds = []
            for _ in range(args.repeats):
                begin = time.perf_counter()
                export_peft(mlx_dir, out, dtype=dtype, force=True)
                seconds.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            check_peft_fits_base(read_peft_adapter(out), ModelArgs.from_dict(config))
            check_seconds = time.perf_counter() - begin
            size = (out / PEFT_WEIGHTS).stat().st_size
            results[dtype] = {
                "export_seconds": summary(seconds),
                "file_bytes": size,
                "check_seconds": check_seconds,
            }
            rows.append([dtype, median(seconds), size / 2**20, check_seconds * 1000])
    print_table(
        ["dtype", "export s (median)", "adapter_model.safetensors MiB", "fit check ms"],
        rows,
        title=f"PEFT export of a random r={args.rank} adapter, {shape_label(config, args.shape)} "
        f"({params:,} LoRA parameters)",
    )
    write_report(
        args.out,
        NAME,
        {"rank": args.rank, "shape": args.shape, "config": config, "params": params},
        results,
        started=started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
