"""The tool-calling eval: batched with prefix reuse vs one question at a time.

Run from the repository root:
    python -m benchmarks.bench_eval [--repeats 3] [--model DIR] [--batch-size 32]
    python -m benchmarks.bench_eval --suite bfcl [--per-category 20] [--batch-size 32]

With --suite bfcl the rows are BFCL v4's (`eval.bfcl`, every category, the first N questions of
each with --per-category); otherwise the frozen 52 below.

Rows: the v2 eval built by the data package (`mlx-plamo data build --recipe v2 --source
data/samples/llamafactory_glaive_toolcall_en_demo.json`, into the work directory; not timed):
40 call + 12 no-call questions, each with the study's system prompt and its tool list.

Model: the tiny random test checkpoint (convert/tiny.py) by default, or --model (any converted
or HF-layout PLaMo 3 directory). A random model rarely emits its stop token, so nearly every
question decodes all 160 new tokens: the worst case for both competitors.

Competitors, in one process on the same model and rows, rotating which goes first:
- batched: `eval.harness.run_eval(..., batch_size=32, share_prefix=True)` (prompts sorted so
  that questions with the same tool list share a batch; their common prefix is run once).
- sequential: `run_eval(..., batch_size=1, share_prefix=False)`, one question at a time with
  no reuse, as the study's eval loop ran.
- batched, no reuse (a third mode, to separate the two effects; --no-third-mode skips it).
All decode greedily with 160 new tokens; the predictions must be identical, and are checked.

At the user's width: --layers 1,2,4 runs the same two competitors on the generation engine
(`mlx_plamo3.generate.generate`, called with the arguments `run_eval` passes it) with a random
model of the 2B width and vocabulary (benchmarks/common.py) at each depth, in --dtype, prompts
tokenized by the tiny vocabulary (longer than the real one would make them: prefill, the part
batching cannot shrink, is overstated). Predictions are compared as token ids; seconds are
fitted over depth and predicted at --fit-depth (24, the real model's), since full-depth decoding
one question at a time is slow on a CPU. With --sequential-sample K, one-at-a-time generation
runs on K of the questions, spread evenly over the set (a question's cost alone does not depend on
the others), both modes are compared in seconds per question, and the predictions are compared
on those K.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import build_models
from benchmarks.common import (
    REPO_ROOT,
    WorkDir,
    add_common_args,
    add_shape_arg,
    blas_note,
    fit_over_depth,
    median,
    mlx_device,
    print_table,
    ratio,
    real_config,
    shape_label,
    summary,
    write_report,
)
from convert.tiny import write_tiny_checkpoint
from eval.bfcl import SUITE, case_row, load_cases
from eval.harness import (
    EVAL_BATCH_SIZE,
    STUDY_MAX_NEW_TOKENS,
    SUITES,
    prompt_messages,
    run_eval,
)
from mlx_plamo3.generate import SamplingConfig, generate, stop_token_ids
from mlx_plamo3.loading import DTYPES, load

NAME = "bench_eval"
SAMPLE_SOURCE = REPO_ROOT / "data" / "samples" / "llamafactory_glaive_toolcall_en_demo.json"


def build_eval_rows(out_dir: Path, source: Path) -> list[dict[str, Any]]:
    """The v2 eval rows from the data package's build command (a child process)."""
    command = [
        sys.executable,
        "-m",
        "commands",
        "data",
        "build",
        "--recipe",
        "v2",
        "--source",
        str(source),
        "--out",
        str(out_dir),
    ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=None, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"data build failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out_dir / "eval.jsonl").read_text().splitlines() if line]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=3)
    parser.add_argument("--model", type=Path, help="model directory [default: tiny random]")
    parser.add_argument("--eval-file", type=Path, help="an eval.jsonl to use instead of building")
    parser.add_argument("--source", type=Path, default=SAMPLE_SOURCE, help="glaive rows to build")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=EVAL_BATCH_SIZE,
        help=f"questions per batch in the batched modes [{EVAL_BATCH_SIZE}, the eval's]",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=STUDY_MAX_NEW_TOKENS,
        help=f"greedy tokens per answer at most [{STUDY_MAX_NEW_TOKENS}, the eval's]",
    )
    parser.add_argument("--fewshot", action="store_true", help="the study's 2-shot prompt")
    parser.add_argument(
        "--suite", choices=SUITES, default="frozen", help="the question set [frozen]"
    )
    parser.add_argument(
        "--per-category", type=int, help="with --suite bfcl: questions per category [all]"
    )
    parser.add_argument(
        "--no-third-mode", action="store_true", help="skip 'batched, no reuse' (prefix effect)"
    )
    parser.add_argument(
        "--layers",
        help="comma-separated depths: compare batched and sequential on a random model of the "
        "2B width at each (instead of --model), and fit seconds over depth",
    )
    add_shape_arg(parser)
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="with --layers"
    )
    parser.add_argument(
        "--fit-depth", type=int, default=24, help="with --layers: the depth to predict [24]"
    )
    parser.add_argument(
        "--sequential-sample",
        type=int,
        help="with --layers: time one-at-a-time generation on this many questions, spread evenly "
        "over the set, and compare seconds per question [all]",
    )
    args = parser.parse_args(argv)
    if args.sequential_sample is not None and args.sequential_sample < 1:
        parser.error("--sequential-sample must be at least 1")
    started = time.perf_counter()

    with WorkDir(args.work_dir, "bench_eval_") as work:
        if args.suite == SUITE:
            rows = [case_row(c) for c in load_cases(limit_per_category=args.per_category)]
            rows_source = f"BFCL v4, {args.per_category or 'all'} questions per category"
        elif args.eval_file is not None:
            rows = [json.loads(x) for x in args.eval_file.read_text().splitlines() if x]
            rows_source = str(args.eval_file)
        else:
            rows = build_eval_rows(work / "data", args.source)
            rows_source = f"mlx-plamo data build --recipe v2 --source {args.source}"
        kinds = {k: sum(r["kind"] == k for r in rows) for k in ("call", "nocall")}
        print(f"{len(rows)} eval rows ({kinds}) from {rows_source}")
        model_dir = args.model
        if model_dir is None or args.layers:
            model_dir = write_tiny_checkpoint(work / "tiny", seed=0, force=True)
        model, tokenizer = load(model_dir)
    if args.layers:
        depths = [int(d) for d in args.layers.split(",")]
        return user_width(args, depths, rows, rows_source, tokenizer, started)

    competitors = {
        "batched + prefix reuse": {"batch_size": args.batch_size, "share_prefix": True},
        "sequential, no reuse": {"batch_size": 1, "share_prefix": False},
        "batched, no reuse": {"batch_size": args.batch_size, "share_prefix": False},
    }
    names = list(competitors)
    if args.no_third_mode:
        names = names[:2]

    def run(name: str) -> dict[str, Any]:
        return run_eval(
            model,
            tokenizer,
            rows,
            condition=f"bench-{name}",
            fewshot=args.fewshot,
            max_new_tokens=args.max_new_tokens,
            **competitors[name],
        )

    for name in names:  # warm-up: kernels and caches, untimed, on a few rows
        run_eval(model, tokenizer, rows[:4], "warmup", max_new_tokens=8, **competitors[name])
    times: dict[str, list[float]] = {n: [] for n in names}
    predictions: dict[str, list[list[str]]] = {n: [] for n in names}
    summaries: dict[str, Any] = {}
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            start = time.perf_counter()
            records = run(name)
            times[name].append(time.perf_counter() - start)
            predictions[name].append([r["pred"] for r in records["rows"]])
            summaries[name] = records["summary"]
            print(f"repeat {repeat} {name}: {times[name][-1]:.2f} s", flush=True)

    reference = predictions[names[0]][0]
    identical = all(p == reference for n in names for p in predictions[n])
    differing = [
        i
        for i in range(len(reference))
        if any(p[i] != reference[i] for n in names for p in predictions[n])
    ]
    generated = [len(tokenizer.encode(p)) for p in reference]
    print(
        f"predictions identical across competitors and repeats: {identical}"
        + ("" if identical else f" (questions differing: {differing[:10]})")
    )
    base = median(times[names[1]])
    rows_out = []
    for name in names:
        t = median(times[name])
        rows_out.append(
            [name, len(times[name]), t, t / len(rows) * 1000, ratio(base, t), sum(generated) / t]
        )
    print()
    print_table(
        ["mode", "runs", "median s", "ms/question", "speed-up vs sequential", "≈ new tok/s"],
        rows_out,
        title=f"The {len(rows)}-question {args.suite} eval on {mlx_device()} ({blas_note()}), "
        f"model {'tiny random' if args.model is None else args.model}, {args.max_new_tokens} new "
        f"tokens max; predictions identical: {'yes' if identical else 'NO'}",
    )
    write_report(
        args.out,
        NAME,
        {
            "model": str(args.model or "tiny random (convert/tiny.py, seed 0)"),
            "row_kinds": kinds,
            **run_settings(args, rows_source),
        },
        {
            "modes": {
                name: {**competitors[name], "seconds": summary(times[name])} for name in names
            },
            "speedup_batched_vs_sequential": ratio(base, median(times[names[0]])),
            "predictions_identical": identical,
            "differing_questions": differing,
            "generated_tokens_total": sum(generated),
            "scores_batched": summaries[names[0]],
        },
        [
            "generated token counts re-encode the decoded predictions (approximate)",
            "the same model object serves both modes; modes alternate order per repeat",
        ],
        started,
    )
    if not identical:
        print("error: the two modes predicted differently", file=sys.stderr)
        return 1
    return 0


def run_settings(args: argparse.Namespace, rows_source: str) -> dict[str, Any]:
    """What a report records of the run besides the model."""
    return {
        "rows": rows_source,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "fewshot": args.fewshot,
        "suite": args.suite,
        "per_category": args.per_category,
        "repeats": args.repeats,
        "device": mlx_device(),
        "blas": blas_note(),
    }


def spread_sample(total: int, count: int | None) -> list[int]:
    """`count` of the indices 0..total-1, spread evenly (the middle of each of `count` equal
    slices); all of them when `count` is None or not smaller than `total`."""
    if count is None or count >= total:
        return list(range(total))
    return [(2 * i + 1) * total // (2 * count) for i in range(count)]


def user_width(
    args: argparse.Namespace,
    depths: list[int],
    rows: list[dict[str, Any]],
    rows_source: str,
    tokenizer,
    started: float,
) -> int:
    """Batched + prefix reuse vs sequential at the 2B width, at each depth, fitted over depth."""
    prompts = [
        tokenizer.apply_chat_template(prompt_messages(r, args.fewshot), add_generation_prompt=True)
        for r in rows
    ]
    modes = {
        "batched + prefix reuse": {"batch_size": args.batch_size, "share_prefix": True},
        "sequential, no reuse": {"batch_size": 1, "share_prefix": False},
    }
    stop_ids, pad_id = stop_token_ids(tokenizer), tokenizer.pad_token_id or 0

    def run(model, name: str, chosen: list[list[int]], new_tokens: int) -> list[list[int]]:
        sampling = SamplingConfig(max_new_tokens=new_tokens)
        return generate(model, chosen, stop_ids, sampling, pad_id=pad_id, **modes[name])

    sample = spread_sample(len(prompts), args.sequential_sample)
    questions = {
        "batched + prefix reuse": list(range(len(prompts))),
        "sequential, no reuse": sample,
    }
    print(f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens")
    if len(sample) < len(prompts):
        print(f"one at a time on {len(sample)} of them: questions {sample}")
    per_depth: dict[int, dict[str, Any]] = {}
    table = []
    for depth in depths:
        config = real_config(depth, args.shape)
        model, _ = build_models(config, DTYPES[args.dtype], with_mlx_lm=False)
        for name in modes:  # warm-up, untimed
            run(model, name, prompts[:2], 4)
        # Seconds per question, and each mode's predictions by question index.
        seconds: dict[str, list[float]] = {name: [] for name in modes}
        outputs: dict[str, list[dict[int, list[int]]]] = {name: [] for name in modes}
        for repeat in range(args.repeats):
            names = list(modes)[repeat % 2 :] + list(modes)[: repeat % 2]
            for name in names:
                chosen = questions[name]
                start = time.perf_counter()
                predicted = run(model, name, [prompts[i] for i in chosen], args.max_new_tokens)
                seconds[name].append((time.perf_counter() - start) / len(chosen))
                outputs[name].append(dict(zip(chosen, predicted, strict=True)))
                print(
                    f"{depth} layers, repeat {repeat}, {name}: {seconds[name][-1]:.2f} s/question"
                )
        reference = outputs["batched + prefix reuse"][0]
        differing = sorted(
            {
                i
                for runs in outputs.values()
                for o in runs
                for i, ids in o.items()
                if ids != reference[i]
            }
        )
        tokens_per_question = sum(map(len, reference.values())) / len(prompts)
        batched = median(seconds["batched + prefix reuse"])
        sequential = median(seconds["sequential, no reuse"])
        per_depth[depth] = {
            "seconds_per_question": {name: summary(values) for name, values in seconds.items()},
            "speedup_batched_vs_sequential": ratio(sequential, batched),
            "generated_tokens_per_question": tokens_per_question,
            "differing_questions": differing,
        }
        table.append(
            [
                shape_label(config, args.shape),
                sequential,
                batched,
                ratio(sequential, batched),
                tokens_per_question / batched,
                "yes" if not differing else f"NO ({len(differing)})",
            ]
        )
        del model
    fit = None
    if len(depths) > 1:
        fixed_b, per_layer_b = fit_over_depth(
            {
                d: r["seconds_per_question"]["batched + prefix reuse"]["median"]
                for d, r in per_depth.items()
            }
        )
        fixed_s, per_layer_s = fit_over_depth(
            {
                d: r["seconds_per_question"]["sequential, no reuse"]["median"]
                for d, r in per_depth.items()
            }
        )
        batched = fixed_b + per_layer_b * args.fit_depth
        sequential = fixed_s + per_layer_s * args.fit_depth
        fit = {
            "depth": args.fit_depth,
            "batched_seconds_per_question": batched,
            "sequential_seconds_per_question": sequential,
            "speedup_batched_vs_sequential": ratio(sequential, batched),
        }
        tokens_per_question = per_depth[depths[-1]]["generated_tokens_per_question"]
        table.append(
            [
                f"fitted at {args.fit_depth} layers",
                sequential,
                batched,
                ratio(sequential, batched),
                tokens_per_question / batched,
                "",
            ]
        )
    print()
    print_table(
        ["model", "sequential s/q", "batched s/q", "speed-up", "≈ new tok/s batched", "identical"],
        table,
        title=f"{len(prompts)} {args.suite} questions, {args.max_new_tokens} new tokens max, "
        f"batch {args.batch_size}, {args.dtype}, on {mlx_device()} ({blas_note()})",
    )
    identical = all(not r["differing_questions"] for r in per_depth.values())
    write_report(
        args.out,
        NAME,
        {
            "model": f"random, {args.shape} shape, depths {depths}, {args.dtype}",
            **run_settings(args, rows_source),
        },
        {
            "depths": per_depth,
            "fit": fit,
            "modes": modes,
            "sequential_questions": sample,
            "predictions_identical": identical,
        },
        [
            "prompts are tokenized by the tiny vocabulary; generation runs the real vocabulary",
            "the same model object serves both modes at a depth; modes alternate order per repeat",
            "seconds are per question; one at a time runs on sequential_questions only",
        ],
        started,
    )
    if not identical:
        print("error: the two modes predicted differently", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
