"""LoRA training throughput at the real layer width: our trainer vs mlx_lm's vs the seed's loop.

Run from the repository root:
    python -m benchmarks.bench_train [--layers 1] [--dtype bfloat16] [--steps 1] [--repeats 3]

Inputs, shared by all three competitors:
- a random Hugging Face-layout checkpoint at the real 2B width (benchmarks/common.py: hidden
  2560, 24 query heads and 4 KV heads of 128, intermediate 10240, the 107,520-token vocabulary
  with the tied lm_head)
  with --layers decoder layers instead of 24;
- the v2 training rows the data package builds from the bundled glaive sample
  (`mlx-plamo data build --recipe v2 --source data/samples/...`), tokenized once with the
  checkpoint's tokenizer and its assistant mask (the small test vocabulary, so sequences are
  longer in tokens than with PFN's); the first (--steps + 1) x --examples-per-step rows that fit
  --max-length, in file order: the first optimizer step is the warm-up (compilation, buffer
  allocation), the next --steps are timed.

Competitors, each in its own child process (so its peak memory is its own), same LoRA recipe
(r 16, alpha 32 -> scale 2, dropout 0.05, all four linear layers of every layer), AdamW at
lr 1e-4, one optimizer step = --examples-per-step examples (the seed's batch 1 x grad-accum 8):
- ours: `train.trainer.Trainer` (mlx-plamo train) with file-order data, no MLflow and no
  checkpoint evals; its default packing of a step's examples into shared rows.
- ours-nopack: the same with `packing=False` (one example per row; rows of a step still share
  a forward pass up to the trainer's token budget).
- mlx_lm: mlx-lm's LoRA trainer (`mlx_lm.tuner.trainer.train`, what `mlx_lm.lora` runs) on
  mlx-lm's own plamo3 model, batch size 1 with gradient accumulation, `linear_to_lora_layers`,
  its default loss (prompt masked from the first assistant token on); data in the same order
  through a fixed-order batch iterator padded like mlx-lm's.
- torch: the seed's loop (finetune/train_lora.py, read on GitHub): transformers-style model
  (our independent PyTorch PLaMo 3, mlx_plamo3/torch_reference.py) + PEFT LoRA, one example per
  forward, loss / accum, backward, clip 1.0, AdamW + LinearLR; on cuda, mps or cpu.

Each competitor runs --repeats times, the order rotated per repeat. Reported per competitor:
medians over the runs of total (input) tokens/s and supervised tokens/s over the timed steps,
the ratio to ours, the largest peak allocator memory (MLX, or torch's on a GPU) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    REPO_ROOT,
    WorkDir,
    add_common_args,
    add_shape_arg,
    blas_note,
    emit_result,
    gib,
    median,
    mlx_device,
    param_count,
    parse_result_line,
    print_table,
    python_command,
    ratio,
    real_config,
    run_child,
    shape_label,
    torch_device,
    write_report,
)

NAME = "bench_train"
COMPETITORS = ("ours", "ours-nopack", "mlx_lm", "torch")
TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
LORA_R, LORA_ALPHA, LORA_DROPOUT, LR = 16, 32.0, 0.05, 1e-4
SAMPLE_SOURCE = REPO_ROOT / "data" / "samples" / "llamafactory_glaive_toolcall_en_demo.json"


# ---- inputs (parent) ---------------------------------------------------------------------------


def prepare_inputs(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Checkpoint, data directory and the tokenized examples every competitor trains on."""
    from benchmarks.bench_eval import build_eval_rows
    from mlx_plamo3.tokenizer import Plamo3Tokenizer

    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        command = python_command("-m", "benchmarks.bench_convert", "--generate-only")
        command += [str(model_dir), "--layers", str(args.layers), "--shape", args.shape]
        child = run_child(command)
        if child.returncode != 0:
            raise SystemExit(f"writing the random checkpoint failed:\n{child.output[-3000:]}")
    built = work / "built"
    if not (built / "train.jsonl").exists():
        build_eval_rows(built, args.source)
    rows = [json.loads(x) for x in (built / "train.jsonl").read_text().splitlines() if x]
    tokenizer = Plamo3Tokenizer.from_pretrained(model_dir)
    needed = args.examples_per_step * (args.steps + 1)
    chosen, examples = [], []
    for row in rows:
        ids, mask = tokenizer.assistant_token_mask(row["messages"])
        if len(ids) > args.max_length or not any(mask[1:]):
            continue
        chosen.append(row)
        examples.append({"ids": [int(i) for i in ids], "mask": [bool(m) for m in mask]})
        if len(chosen) == needed:
            break
    if len(chosen) < needed:
        raise SystemExit(f"only {len(chosen)} training rows fit {args.max_length} tokens")
    data_dir = work / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    shutil.copy2(built / "eval.jsonl", data_dir / "eval.jsonl")
    (work / "examples.json").write_text(json.dumps(examples))
    return {"model_dir": model_dir, "data_dir": data_dir, "examples": examples}


def step_token_counts(examples: list[dict], per_step: int) -> list[tuple[int, int]]:
    """(input tokens, supervised targets) of each optimizer step, as our trainer counts them."""
    counts = []
    for start in range(0, len(examples), per_step):
        chunk = examples[start : start + per_step]
        counts.append(
            (sum(len(e["ids"]) - 1 for e in chunk), sum(sum(e["mask"][1:]) for e in chunk))
        )
    return counts


# ---- workers (children) ------------------------------------------------------------------------


def worker_ours(work: Path, args: argparse.Namespace, packing: bool = True) -> dict[str, Any]:
    import mlx.core as mx

    from train.config import TrainConfig
    from train.trainer import Trainer

    config = TrainConfig(
        data=str(work / "data"),
        model=str(work / "model"),
        adapter_path=str(work / ("adapter_ours" if packing else "adapter_ours_nopack")),
        overwrite=True,
        shuffle=False,
        grad_accum=args.examples_per_step,
        epochs=1,
        max_length=args.max_length,
        dtype=args.dtype,
        packing=packing,
        grad_checkpoint=args.grad_checkpoint,
        max_batch_tokens=args.max_batch_tokens,
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        learning_rate=LR,
        mlflow=False,
        checkpoint_eval=False,
        checkpoint_every=10**6,
        progress=False,
    )
    history = []
    Trainer(config, on_step=history.append, log=lambda message: None).run()
    return {
        "steps": [
            {
                "seconds": s.seconds,
                "tokens": s.tokens,
                "supervised": s.supervised_tokens,
                "padding": s.padding_tokens,
                "passes": s.forward_passes,
                "loss": s.loss,
            }
            for s in history
        ],
        "peak_bytes": int(mx.get_peak_memory()),
        "settings": {
            "packing": config.packing,
            "max_batch_tokens": config.max_batch_tokens,
            "compile": config.compile,
            "grad_checkpoint": config.grad_checkpoint,
            "grad_clip": config.max_grad_norm,
        },
    }


def worker_mlx_lm(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    examples = json.loads((work / "examples.json").read_text())
    per_step = args.examples_per_step
    model, _ = load_model(work / "model")
    model.set_dtype(getattr(mx, args.dtype))
    model.freeze()
    lora = {"rank": LORA_R, "scale": LORA_ALPHA / LORA_R, "dropout": LORA_DROPOUT}
    linear_to_lora_layers(model, len(model.layers), lora)
    # mlx-lm masks the prompt by an offset: targets from the first supervised token to the end.
    offsets = [e["mask"].index(True) for e in examples]
    dataset = [(e["ids"], o) for e, o in zip(examples, offsets, strict=True)]
    supervised = [len(e["ids"]) - o for e, o in zip(examples, offsets, strict=True)]

    def fixed_order_batches(dataset, batch_size, max_seq_length, loop=False, **_):
        pad_to = 32  # mlx-lm's iterate_batches pads to 1 + a multiple of 32
        while True:
            for ids, offset in dataset:
                width = 1 + pad_to * ((len(ids) + pad_to - 1) // pad_to)
                batch = np.zeros((1, width), np.int32)
                batch[0, : len(ids)] = ids
                yield mx.array(batch), mx.array([[offset, len(ids)]])
            if not loop:
                break

    windows: list[dict[str, Any]] = []

    class Collect(TrainingCallback):
        def on_train_loss_report(self, info: dict[str, Any]) -> None:
            windows.append(info)

    adapter_dir = work / "adapter_mlx_lm"
    adapter_dir.mkdir(exist_ok=True)
    training_args = TrainingArgs(
        batch_size=1,
        iters=len(dataset),
        steps_per_report=per_step,
        steps_per_eval=10**9,
        steps_per_save=10**9,
        max_seq_length=args.max_length + 1,
        adapter_file=str(adapter_dir / "adapters.safetensors"),
        grad_checkpoint=args.grad_checkpoint,
        grad_accumulation_steps=per_step,
    )
    optimizer = optim.AdamW(learning_rate=LR)
    train(
        model,
        optimizer,
        dataset,
        None,
        args=training_args,
        iterate_batches=fixed_order_batches,
        training_callback=Collect(),
    )
    steps = []
    for index, info in enumerate(windows):
        chunk = examples[index * per_step : (index + 1) * per_step]
        steps.append(
            {
                "seconds": per_step / info["iterations_per_second"],
                "tokens": sum(len(e["ids"]) - 1 for e in chunk),
                "supervised": sum(supervised[index * per_step : (index + 1) * per_step]),
                "loss": info["train_loss"],
            }
        )
    return {
        "steps": steps,
        "peak_bytes": int(mx.get_peak_memory()),
        "settings": {
            "batch_size": 1,
            "grad_accumulation_steps": per_step,
            "compile": True,
            "grad_checkpoint": args.grad_checkpoint,
            "grad_clip": None,
        },
    }


def worker_torch(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.checkpoint import checkpoint

    from mlx_plamo3.torch_reference import load_reference

    device = torch_device()
    dtype = getattr(torch, args.dtype)
    examples = json.loads((work / "examples.json").read_text())
    per_step = args.examples_per_step
    torch.manual_seed(0)
    model = load_reference(work / "model", dtype=dtype, device=device)
    if args.grad_checkpoint:
        # The seed called gradient_checkpointing_enable(); the reference model has no hook for
        # it, so each decoder layer is wrapped in torch's checkpoint here (same effect).
        for layer in model.model.layers.layers:
            forward = layer.forward

            def checkpointed(x, positions, allowed, cache, forward=forward):
                return checkpoint(forward, x, positions, allowed, cache, use_reentrant=False)

            layer.forward = checkpointed
    lora = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=TARGETS,
    )
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total_steps = math.ceil(len(examples) / per_step)
    opt = torch.optim.AdamW(trainable, lr=LR)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=total_steps)
    model.train()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        elif device == "mps":
            torch.mps.synchronize()

    def allocated() -> int | None:
        # MPS keeps no peak; its driver's allocation, sampled after each backward (before the
        # gradients are freed), is the closest figure.
        if device == "mps":
            return int(torch.mps.driver_allocated_memory())
        return None

    steps, mps_peak = [], 0
    for start in range(0, len(examples), per_step):
        chunk = examples[start : start + per_step]
        sync()
        began = time.perf_counter()
        for example in chunk:
            ids = torch.tensor([example["ids"]], device=device)
            labels = torch.tensor(
                [[i if m else -100 for i, m in zip(example["ids"], example["mask"], strict=True)]],
                device=device,
            )
            out = model(input_ids=ids, labels=labels, use_cache=False)
            (out.loss / per_step).backward()
            mps_peak = max(mps_peak, allocated() or 0)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        sync()
        steps.append(
            {
                "seconds": time.perf_counter() - began,
                "tokens": sum(len(e["ids"]) - 1 for e in chunk),
                "supervised": sum(sum(e["mask"][1:]) for e in chunk),
                "loss": float(out.loss.item()),
            }
        )
    peak = int(torch.cuda.max_memory_allocated()) if device == "cuda" else (mps_peak or None)
    return {
        "steps": steps,
        "peak_bytes": peak,
        "settings": {
            "device": device,
            "threads": torch.get_num_threads(),
            "grad_checkpoint": args.grad_checkpoint,
            "grad_clip": 1.0,
        },
    }


WORKERS = {
    "ours": worker_ours,
    "ours-nopack": lambda work, args: worker_ours(work, args, packing=False),
    "mlx_lm": worker_mlx_lm,
    "torch": worker_torch,
}


# ---- main ------------------------------------------------------------------------------------


def worker_args(args: argparse.Namespace, work: Path, name: str) -> list[str]:
    command = python_command(
        "-m",
        "benchmarks.bench_train",
        "--worker",
        name,
        "--work-dir",
        str(work),
        "--shape",
        args.shape,
        "--layers",
        str(args.layers),
        "--dtype",
        args.dtype,
        "--examples-per-step",
        str(args.examples_per_step),
        "--steps",
        str(args.steps),
        "--max-length",
        str(args.max_length),
    )
    if args.grad_checkpoint:
        command.append("--grad-checkpoint")
    if args.max_batch_tokens:
        command += ["--max-batch-tokens", str(args.max_batch_tokens)]
    return command


def run_competitor(args: argparse.Namespace, work: Path, name: str) -> dict[str, Any]:
    """One run of a competitor in its own process; its steps, peaks and timed totals."""
    child = run_child(worker_args(args, work, name), timeout=args.timeout)
    if child.returncode != 0:
        print(child.output[-4000:])
        return {"error": f"exit code {child.returncode}", "output": child.output[-4000:]}
    result = parse_result_line(child.output)
    result["peak_rss_bytes"] = child.peak_rss_bytes
    result["process_seconds"] = child.seconds
    timed = result["steps"][1:]  # step 1 is the warm-up
    seconds = sum(s["seconds"] for s in timed)
    result["timed"] = {
        "steps": len(timed),
        "seconds": seconds,
        "tokens": sum(s["tokens"] for s in timed),
        "supervised": sum(s["supervised"] for s in timed),
        "tokens_per_second": sum(s["tokens"] for s in timed) / seconds,
        "supervised_per_second": sum(s["supervised"] for s in timed) / seconds,
        "warmup_seconds": result["steps"][0]["seconds"],
    }
    print(json.dumps(result["timed"]), flush=True)
    return result


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over a competitor's runs (every run must have succeeded); the runs kept raw."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return {"error": failed[0]["error"], "output": failed[0]["output"], "runs": runs}
    timed = [run["timed"] for run in runs]
    return {
        "timed": {
            "runs": len(runs),
            "steps": timed[0]["steps"],
            "tokens": timed[0]["tokens"],
            "supervised": timed[0]["supervised"],
            "seconds_per_step": median([t["seconds"] / t["steps"] for t in timed]),
            "tokens_per_second": median([t["tokens_per_second"] for t in timed]),
            "supervised_per_second": median([t["supervised_per_second"] for t in timed]),
            "warmup_seconds": median([t["warmup_seconds"] for t in timed]),
        },
        "peak_bytes": max_or_none([run.get("peak_bytes") for run in runs]),
        "peak_rss_bytes": max_or_none([run["peak_rss_bytes"] for run in runs]),
        "runs": runs,
    }


def max_or_none(values: list[int | None]) -> int | None:
    """The largest measured value; None where the competitor has no such measurement."""
    measured = [v for v in values if v is not None]
    return max(measured) if measured else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=3)
    add_shape_arg(parser)
    parser.add_argument(
        "--competitors",
        default=",".join(COMPETITORS),
        help="comma-separated subset of: " + ", ".join(COMPETITORS),
    )
    parser.add_argument("--layers", type=int, default=1, help="decoder layers at 2B width")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="model dtype for all competitors (float32 is far faster on a CPU)",
    )
    parser.add_argument("--examples-per-step", type=int, default=8, help="the seed's grad-accum")
    parser.add_argument("--steps", type=int, default=1, help="timed optimizer steps")
    parser.add_argument(
        "--max-length",
        type=int,
        default=768,
        help="longest example in tokens; longer rows are skipped",
    )
    parser.add_argument("--grad-checkpoint", action="store_true", help="for all competitors")
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="ours: tokens per forward pass [default: what the memory plan chooses]",
    )
    parser.add_argument("--source", type=Path, default=SAMPLE_SOURCE, help="glaive rows")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per competitor")
    parser.add_argument("--worker", choices=COMPETITORS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = WORKERS[args.worker](args.work_dir, args)
        emit_result(result)
        return 0

    started = time.perf_counter()
    config = real_config(args.layers, args.shape)
    names = args.competitors.split(",")
    with WorkDir(args.work_dir, "bench_train_") as work:
        inputs = prepare_inputs(work, args)
        examples = inputs["examples"]
        lengths = [len(e["ids"]) for e in examples]
        print(
            f"{len(examples)} examples, {sum(lengths):,} tokens (mean "
            f"{sum(lengths) / len(lengths):.0f}, max {max(lengths)}), "
            f"{sum(sum(e['mask'][1:]) for e in examples):,} supervised; "
            f"model {param_count(config)['total'] / 1e9:.2f}B params ({args.layers} layers)",
            flush=True,
        )
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for repeat in range(args.repeats):
            shift = repeat % len(names)  # rotate the order: no competitor always goes first
            for name in names[shift:] + names[:shift]:
                print(f"repeat {repeat}: running {name} ...", flush=True)
                runs[name].append(run_competitor(args, work, name))
        results = {name: summarize_runs(name_runs) for name, name_runs in runs.items()}

    base = results.get("ours", {}).get("timed", {}).get("tokens_per_second")
    rows = []
    for name in names:
        r = results[name]
        if "error" in r:
            rows.append([name, "failed", "-", "-", "-", "-", "-", "-", "-", "-"])
            continue
        t = r["timed"]
        rows.append(
            [
                name,
                t["runs"],
                t["steps"],
                t["warmup_seconds"],
                t["seconds_per_step"],
                t["tokens_per_second"],
                t["supervised_per_second"],
                ratio(t["tokens_per_second"], base) if base else None,
                gib(r["peak_bytes"]),
                gib(r["peak_rss_bytes"]),
            ]
        )
    print()
    print_table(
        [
            "trainer",
            "runs",
            "timed steps",
            "warm-up s",
            "s/step",
            "tokens/s",
            "supervised tok/s",
            "vs ours",
            "alloc peak GiB",
            "peak RSS GiB",
        ],
        rows,
        title=f"LoRA training at the {shape_label(config, args.shape)}, {args.dtype}, "
        f"{args.examples_per_step} examples/step, on {mlx_device()} / torch {torch_device()} "
        f"({blas_note()}; grad checkpoint {'on' if args.grad_checkpoint else 'off'})",
    )
    write_report(
        args.out,
        NAME,
        {
            "shape": args.shape,
            "layers": args.layers,
            "params": param_count(config),
            "dtype": args.dtype,
            "examples_per_step": args.examples_per_step,
            "timed_steps": args.steps,
            "max_length": args.max_length,
            "grad_checkpoint": args.grad_checkpoint,
            "example_lengths": lengths,
            "device": mlx_device(),
            "torch_device": torch_device(),
            "blas": blas_note(),
        },
        results,
        [
            "tokens = input tokens (len(ids) - 1 per example); supervised = targets that carry "
            "loss: our mask for ours and torch, mlx-lm's offset mask (first supervised token to "
            "the end) for mlx_lm",
            "step 1 of each competitor is a warm-up and is not in the rates",
            "alloc peak: MLX's mx.get_peak_memory for ours and mlx_lm; for torch, "
            "torch.cuda.max_memory_allocated on CUDA, the largest torch.mps."
            "driver_allocated_memory after a backward on MPS, none on CPU",
        ],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
