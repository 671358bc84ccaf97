"""LoRA training throughput at the real depth: our trainer vs mlx_lm's vs the study's loop.

Run from the repository root:
    python -m benchmarks.bench_train [--depths 1,2,4] [--check-depth 24] [--dtype float32]

Why depths: a step's time is a fixed part (embedding, output head, optimizer) plus a part per
decoder layer, and which trainer wins depends on the mix; one layer at the 2B width is mostly
output head (275M of its 0.37B parameters). Each competitor runs at every --depths (decoder
layers at the 2B width), its seconds per step are fitted over depth (least squares, a + b x
layers), and the fit predicts the real 24-layer model; ours also runs once at --check-depth to
check the fit where it matters.

Inputs, shared by all competitors:
- a random Hugging Face-layout checkpoint at the real 2B width (benchmarks/common.py: hidden
  2560, 24 query heads and 4 KV heads of 128, intermediate 10240, the 107,520-token vocabulary
  with the tied lm_head), one per depth;
- the v2 training rows the data package builds from the bundled glaive sample
  (`mlx-plamo data build --recipe v2 --source data/samples/...`), tokenized once with the
  checkpoint's tokenizer and its assistant mask (the small test vocabulary, so sequences are
  longer in tokens than with PFN's); the first (--steps + 1) x --examples-per-step rows that fit
  --max-length, in file order: the first optimizer step is the warm-up (compilation, buffer
  allocation), the next --steps are timed.

Settings: ours runs with what the memory plan chooses for the --check-depth model on this
machine's budget (`mlx-plamo train --plan`), the same at every depth so the fit compares like
with like; --max-batch-tokens and --grad-checkpoint override it. Gradient checkpointing, when the
plan or the flag turns it on, is on for every competitor (the same memory budget).

Competitors, each in its own child process (so its peak memory is its own), same LoRA recipe
(r 16, alpha 32 -> scale 2, dropout 0.05, all four linear layers of every layer), AdamW at
lr 1e-4, one optimizer step = --examples-per-step examples (the study's batch 1 x grad-accum 8):
- ours: `train.trainer.Trainer` (mlx-plamo train) with file-order data, no MLflow and no
  checkpoint evals, packing examples into shared rows if the plan does.
- ours-nopack: the same with `packing=False` (one example per row).
- mlx_lm: mlx-lm's LoRA trainer (`mlx_lm.tuner.trainer.train`, what `mlx_lm.lora` runs) on
  mlx-lm's own plamo3 model, batch size 1 with gradient accumulation, `linear_to_lora_layers`,
  its default loss (prompt masked from the first assistant token on); data in the same order
  through a fixed-order batch iterator padded like mlx-lm's.
- torch: the study's loop (finetune/train_lora.py, read on GitHub): transformers-style model
  (our independent PyTorch PLaMo 3, mlx_plamo3/torch_reference.py) + PEFT LoRA, one example per
  forward, loss / accum, backward, clip 1.0, AdamW + LinearLR; on cuda, mps or cpu.

Each competitor runs --repeats times per depth, the order rotated per repeat. Reported per
competitor and depth: medians over the runs of total (input) tokens/s and supervised tokens/s
over the timed steps, the largest peak allocator memory (MLX, or torch's on a GPU) and peak RSS;
then the depth fit: seconds per layer, the fixed part, the predicted 24-layer step and its
tokens/s and ratio to ours, beside ours measured at --check-depth.
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

from benchmarks.bench_eval import build_eval_rows
from benchmarks.common import (
    REPO_ROOT,
    WorkDir,
    add_common_args,
    add_shape_arg,
    blas_note,
    emit_result,
    fit_over_depth,
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
    torch_device,
    write_report,
)
from mlx_plamo3.tokenizer import Plamo3Tokenizer
from train.config import TrainConfig
from train.trainer import Trainer, memory_plan

NAME = "bench_train"
COMPETITORS = ("ours", "ours-nopack", "mlx_lm", "torch")
TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
LORA_R, LORA_ALPHA, LORA_DROPOUT, LR = 16, 32.0, 0.05, 1e-4
SAMPLE_SOURCE = REPO_ROOT / "data" / "samples" / "llamafactory_glaive_toolcall_en_demo.json"


# ---- inputs (parent) ---------------------------------------------------------------------------


def prepare_model(work: Path, layers: int, shape: str) -> Path:
    """The random checkpoint with `layers` decoder layers (written once, kept in `work`)."""
    model_dir = work / f"model_{layers}_layers"
    if not (model_dir / "config.json").exists():
        command = python_command("-m", "benchmarks.bench_convert", "--generate-only")
        command += [str(model_dir), "--layers", str(layers), "--shape", shape]
        child = run_child(command)
        if child.returncode != 0:
            raise SystemExit(f"writing the random checkpoint failed:\n{child.output[-3000:]}")
    return model_dir


def prepare_data(work: Path, model_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The data directory and the tokenized examples every competitor trains on."""
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
    return examples


def ours_config(
    work: Path, model_dir: Path, args: argparse.Namespace, packing: bool | None = True
) -> Any:
    """Our trainer's config for this benchmark; the batching settings left to the plan are
    None unless the arguments fix them."""
    return TrainConfig(
        data=str(work / "data"),
        model=str(model_dir),
        adapter_path=str(work / ("adapter_ours" if packing is not False else "adapter_nopack")),
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


def config_only(model_dir: Path, out: Path, layers: int) -> Path:
    """A directory with `model_dir`'s config (at `layers` layers) and tokenizer, no weights."""
    out.mkdir(exist_ok=True)
    for path in model_dir.iterdir():
        if path.is_file() and not path.name.startswith("model"):
            shutil.copy2(path, out / path.name)
    config = json.loads((model_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
    return out


def planned_settings(work: Path, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """What the memory plan chooses for this model, data and machine (flags given win)."""
    config = ours_config(work, model_dir, args, packing=None)
    plan = memory_plan(config, log=lambda message: None)
    return {
        "max_batch_tokens": plan.max_batch_tokens,
        "packing": plan.packing,
        "grad_checkpoint": plan.grad_checkpoint,
        "predicted_peak_gib": plan.predicted_peak_gib,
        "budget_gib": plan.budget_gib,
    }


# ---- workers (children) ------------------------------------------------------------------------


def worker_ours(work: Path, args: argparse.Namespace, packing: bool) -> dict[str, Any]:
    import mlx.core as mx

    config = ours_config(work, args.model_dir, args, packing)
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
    model, _ = load_model(args.model_dir)
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

    # torch is optional: torch_reference imports it at its top, and only this competitor needs it
    # (the other workers would carry torch's import time and memory in their measurements).
    from mlx_plamo3.torch_reference import load_reference

    device = torch_device()
    dtype = getattr(torch, args.dtype)
    examples = json.loads((work / "examples.json").read_text())
    per_step = args.examples_per_step
    torch.manual_seed(0)
    model = load_reference(args.model_dir, dtype=dtype, device=device)
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
    "ours": lambda work, args: worker_ours(work, args, packing=args.packing),
    "ours-nopack": lambda work, args: worker_ours(work, args, packing=False),
    "mlx_lm": worker_mlx_lm,
    "torch": worker_torch,
}


# ---- main ------------------------------------------------------------------------------------


def worker_args(args: argparse.Namespace, work: Path, name: str, model_dir: Path) -> list[str]:
    command = python_command(
        "-m",
        "benchmarks.bench_train",
        "--worker",
        name,
        "--work-dir",
        str(work),
        "--model-dir",
        str(model_dir),
        "--dtype",
        args.dtype,
        "--examples-per-step",
        str(args.examples_per_step),
        "--steps",
        str(args.steps),
        "--max-length",
        str(args.max_length),
        "--max-batch-tokens",
        str(args.max_batch_tokens),
        "--packing",
        str(args.packing),
        "--grad-checkpoint" if args.grad_checkpoint else "--no-grad-checkpoint",
    )
    return command


def run_competitor(
    args: argparse.Namespace, work: Path, name: str, model_dir: Path
) -> dict[str, Any]:
    """One run of a competitor in its own process; its steps, peaks and timed totals."""
    child = run_child(worker_args(args, work, name, model_dir), timeout=args.timeout)
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


def depth_fits(
    results: dict[int, dict[str, Any]], names: Sequence[str], target: int
) -> dict[str, dict[str, Any]]:
    """Per competitor: its fit and the predicted step at `target` layers (None if a depth
    failed or only one depth was run)."""
    fits: dict[str, dict[str, Any]] = {}
    for name in names:
        per_depth = {d: r[name] for d, r in results.items()}
        if len(per_depth) < 2 or any("error" in r for r in per_depth.values()):
            continue
        seconds = {d: r["timed"]["seconds_per_step"] for d, r in per_depth.items()}
        timed = next(iter(per_depth.values()))["timed"]  # the same steps at every depth
        tokens_per_step = timed["tokens"] / timed["steps"]
        fixed, per_layer = fit_over_depth(seconds)
        predicted = fixed + per_layer * target
        fits[name] = {
            "seconds_per_step": seconds,
            "fixed_seconds": fixed,
            "seconds_per_layer": per_layer,
            "predicted_seconds_per_step": predicted,
            "predicted_tokens_per_second": tokens_per_step / predicted,
            "predicted_peak_bytes": None,
        }
        peaks = {d: r["peak_bytes"] for d, r in per_depth.items()}
        if all(peak is not None for peak in peaks.values()):
            fixed_bytes, bytes_per_layer = fit_over_depth(peaks)
            fits[name]["predicted_peak_bytes"] = fixed_bytes + bytes_per_layer * target
    return fits


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=3)
    add_shape_arg(parser)
    parser.add_argument(
        "--competitors",
        default=",".join(COMPETITORS),
        help="comma-separated subset of: " + ", ".join(COMPETITORS),
    )
    parser.add_argument(
        "--depths",
        default="1,2,4",
        help="comma-separated decoder-layer counts at the 2B width to measure and fit over",
    )
    parser.add_argument(
        "--check-depth",
        type=int,
        default=None,
        help="layers of the one full-depth run of ours that checks the fit, 0 for none "
        "[default: the shape's real depth, 24]",
    )
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="model dtype for all competitors (float32 is far faster on a CPU)",
    )
    parser.add_argument("--examples-per-step", type=int, default=8, help="the study's grad-accum")
    parser.add_argument("--steps", type=int, default=1, help="timed optimizer steps")
    parser.add_argument(
        "--max-length",
        type=int,
        default=768,
        help="longest example in tokens; longer rows are skipped",
    )
    parser.add_argument(
        "--grad-checkpoint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gradient checkpointing on or off for all competitors [default: on if the memory "
        "plan turns it on for ours at the check depth]",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="ours: tokens per forward pass [default: what the memory plan chooses]",
    )
    parser.add_argument("--source", type=Path, default=SAMPLE_SOURCE, help="glaive rows")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per competitor")
    parser.add_argument(
        "--reprint",
        type=Path,
        help="print the tables of an earlier report (its JSON file) instead of measuring",
    )
    parser.add_argument("--worker", choices=COMPETITORS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--packing", choices=["True", "False"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.packing = args.packing == "True"
        result = WORKERS[args.worker](args.work_dir, args)
        emit_result(result)
        return 0

    if args.reprint:
        return reprint(args.reprint)
    started = time.perf_counter()
    depths = sorted({int(d) for d in args.depths.split(",")})
    full_depth = real_config(None, args.shape)["num_hidden_layers"]
    check_depth = full_depth if args.check_depth is None else args.check_depth
    names = args.competitors.split(",")
    with WorkDir(args.work_dir, "bench_train_") as work:
        model_dirs = {d: prepare_model(work, d, args.shape) for d in depths}
        examples = prepare_data(work, model_dirs[depths[0]], args)
        if check_depth:
            plan_dir = prepare_model(work, check_depth, args.shape)
        else:  # the plan reads config.json and the tokenizer only
            plan_dir = config_only(model_dirs[depths[0]], work / "plan_model", full_depth)
        plan = planned_settings(work, plan_dir, args)
        args.packing = plan["packing"]
        if args.max_batch_tokens is None:
            args.max_batch_tokens = plan["max_batch_tokens"]
        if args.grad_checkpoint is None:
            args.grad_checkpoint = plan["grad_checkpoint"]
        lengths = [len(e["ids"]) for e in examples]
        print(
            f"{len(examples)} examples, {sum(lengths):,} tokens (mean "
            f"{sum(lengths) / len(lengths):.0f}, max {max(lengths)}), "
            f"{sum(sum(e['mask'][1:]) for e in examples):,} supervised; depths {depths}; "
            f"ours: passes of {args.max_batch_tokens} tokens, checkpointing "
            f"{'on' if args.grad_checkpoint else 'off'} (the plan for {check_depth or full_depth}"
            f" layers: {plan})",
            flush=True,
        )
        runs = {d: {name: [] for name in names} for d in depths}
        for repeat in range(args.repeats):
            shift = repeat % len(names)  # rotate the order: no competitor always goes first
            for depth in depths:
                for name in names[shift:] + names[:shift]:
                    print(f"repeat {repeat}, {depth} layers: running {name} ...", flush=True)
                    runs[depth][name].append(run_competitor(args, work, name, model_dirs[depth]))
        results = {
            d: {n: summarize_runs(r) for n, r in by_name.items()} for d, by_name in runs.items()
        }
        check = None
        if check_depth and "ours" in names:
            print(f"checking the fit: ours at {check_depth} layers ...", flush=True)
            check = summarize_runs([run_competitor(args, work, "ours", plan_dir)])

    fits = depth_fits(results, names, full_depth)
    environment = f"{mlx_device()} / torch {torch_device()} ({blas_note()})"
    print_results(
        args, names, depths, results, fits, check, check_depth, full_depth, plan, environment
    )
    write_report(
        args.out,
        NAME,
        {
            "shape": args.shape,
            "depths": depths,
            "check_depth": check_depth,
            "full_depth": full_depth,
            "params": {d: param_count(real_config(d, args.shape)) for d in [*depths, full_depth]},
            "dtype": args.dtype,
            "examples_per_step": args.examples_per_step,
            "timed_steps": args.steps,
            "max_length": args.max_length,
            "max_batch_tokens": args.max_batch_tokens,
            "grad_checkpoint": args.grad_checkpoint,
            "plan": plan,
            "example_lengths": lengths,
            "device": mlx_device(),
            "torch_device": torch_device(),
            "blas": blas_note(),
        },
        {"by_depth": results, "fits": fits, "check": check},
        [
            "tokens = input tokens (len(ids) - 1 per example); supervised = targets that carry "
            "loss: our mask for ours and torch, mlx-lm's offset mask (first supervised token to "
            "the end) for mlx_lm",
            "step 1 of each competitor is a warm-up and is not in the rates",
            "fits: least squares of median seconds per step over depth; predicted at the "
            "real depth; check: ours measured once at check_depth",
            "alloc peak: MLX's mx.get_peak_memory for ours and mlx_lm; for torch, "
            "torch.cuda.max_memory_allocated on CUDA, the largest torch.mps."
            "driver_allocated_memory after a backward on MPS, none on CPU",
        ],
        started,
    )
    return 0


def reprint(path: Path) -> int:
    """The tables of an earlier report, refitted from its raw numbers."""
    doc = json.loads(path.read_text())
    settings, found = doc["settings"], doc["results"]
    results = {int(d): by_name for d, by_name in found["by_depth"].items()}
    depths = sorted(results)
    names = list(results[depths[0]])
    fits = depth_fits(results, names, settings["full_depth"])
    args = argparse.Namespace(
        **{k: settings[k] for k in ("dtype", "examples_per_step", "grad_checkpoint")},
        max_batch_tokens=settings["max_batch_tokens"],
    )
    print_results(
        args,
        names,
        depths,
        results,
        fits,
        found["check"],
        settings["check_depth"],
        settings["full_depth"],
        settings["plan"],
        f"{settings['device']} / torch {settings['torch_device']} ({settings['blas']})",
    )
    return 0


def print_results(
    args: argparse.Namespace,
    names: Sequence[str],
    depths: Sequence[int],
    results: dict[int, dict[str, Any]],
    fits: dict[str, dict[str, Any]],
    check: dict[str, Any] | None,
    check_depth: int,
    full_depth: int,
    plan: dict[str, Any],
    environment: str,
) -> None:
    """The measured table (every depth) and the fit table (predicted at the real depth)."""
    rows = []
    for depth in depths:
        base = results[depth].get("ours", {}).get("timed", {}).get("tokens_per_second")
        for name in names:
            r = results[depth][name]
            if "error" in r:
                rows.append([depth, name, "failed", "-", "-", "-", "-", "-", "-", "-"])
                continue
            t = r["timed"]
            rows.append(
                [
                    depth,
                    name,
                    t["runs"],
                    t["warmup_seconds"],
                    t["seconds_per_step"],
                    t["tokens_per_second"],
                    t["supervised_per_second"],
                    ratio(t["tokens_per_second"], base) if base else None,
                    gib(r["peak_bytes"]),
                    gib(r["peak_rss_bytes"]),
                ]
            )
    setting = (
        f"{args.dtype}, {args.examples_per_step} examples/step, on {environment}, grad checkpoint "
        f"{'on' if args.grad_checkpoint else 'off'}, ours: passes of {args.max_batch_tokens} "
        "tokens"
    )
    print()
    print_table(
        [
            "layers",
            "trainer",
            "runs",
            "warm-up s",
            "s/step",
            "tokens/s",
            "supervised tok/s",
            "vs ours",
            "alloc peak GiB",
            "peak RSS GiB",
        ],
        rows,
        title=f"LoRA training at the 2B width, measured, {setting}",
    )
    if not fits:
        return
    base = fits.get("ours", {}).get("predicted_tokens_per_second")
    checked = check["timed"]["seconds_per_step"] if check and "timed" in check else None
    rows = []
    for name, fit in fits.items():
        measured = checked if name == "ours" and check_depth == full_depth else None
        rows.append(
            [
                name,
                *[fit["seconds_per_step"][d] for d in depths],
                fit["seconds_per_layer"],
                fit["fixed_seconds"],
                fit["predicted_seconds_per_step"],
                measured,
                ratio(measured, fit["predicted_seconds_per_step"]) if measured else None,
                fit["predicted_tokens_per_second"],
                ratio(fit["predicted_tokens_per_second"], base) if base else None,
                gib(fit["predicted_peak_bytes"]),
            ]
        )
    print()
    print_table(
        [
            "trainer",
            *[f"{d} layers s/step" for d in depths],
            "s per layer",
            "fixed s",
            f"predicted {full_depth} layers s/step",
            f"measured {full_depth} layers s/step",
            "measured / predicted",
            f"predicted {full_depth} layers tokens/s",
            "vs ours",
            f"predicted {full_depth} layers alloc peak GiB",
        ],
        rows,
        title=f"Fitted over depth, predicted at {full_depth} layers, {setting}; the memory plan's "
        f"budget here: {plan['budget_gib']:.1f} GiB",
    )
    if check and "timed" in check and check_depth != full_depth:
        fit = fits.get("ours")
        predicted = fit["fixed_seconds"] + fit["seconds_per_layer"] * check_depth if fit else None
        print(
            f"ours at {check_depth} layers: measured {checked:.2f} s/step, fit predicts "
            + (f"{predicted:.2f}" if predicted else "-")
        )


if __name__ == "__main__":
    raise SystemExit(main())
