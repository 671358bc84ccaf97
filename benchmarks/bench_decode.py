"""Decode tokens/s with the KV cache at batch 1 and 8: our generation vs mlx-lm's, same weights.

Run from the repository root:
    python -m benchmarks.bench_decode [--models tiny,real] [--layers 2] [--dtype bfloat16]

Models (random weights; decode speed does not depend on their values):
- tiny: the test checkpoint's config (convert/tiny.py), 4 layers of width 64.
- real: the real 2B width (benchmarks/common.py: hidden 2560, 24 query heads and 4 KV heads of
  128, the full 107,520-token vocabulary and tied lm_head) with --layers layers instead of 24,
  so it fits a CPU run. Per decoded token the 24-layer model reads 2.60B weights; this one
  reads the embedding (275M) + layers x 97.0M.

Competitors, in one process on the same weights and prompts (random token ids, all rows the
same length, no shared prefix):
- ours: `mlx_plamo3.generate.generate` (greedy; no stop tokens, so every row runs to the end).
- mlx_lm: mlx-lm's own `plamo3` model with the same weights, `generate_step` at batch 1 and
  `BatchGenerator` at larger batches (greedy, no stop tokens).

Decode rate = batch x (N - 1) / (t(N) - t(1)), where t(n) is the median wall time of a whole
generation of n new tokens; the difference removes prefill and set-up, leaving N - 1 steps that
each decode one token per row with the KV cache. Medians over --repeats.
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

import mlx.core as mx
from mlx.utils import tree_flatten

from benchmarks.common import (
    add_common_args,
    add_shape_arg,
    blas_note,
    median,
    mlx_device,
    param_count,
    print_table,
    ratio,
    real_config,
    shape_label,
    summary,
    write_report,
)
from convert.tiny import TINY_CONFIG
from convert.tiny_vocab import tiny_vocab_rows
from mlx_plamo3.generate import SamplingConfig, generate
from mlx_plamo3.loading import DTYPES
from mlx_plamo3.model import Model, ModelArgs

NAME = "bench_decode"
# The seed study: llama.cpp b9596, Metal, Q8_0 PLaMo 3 2B on an M4 Pro (48 GB),
# llama-batched-bench -npp 512 -ntg 128 (aggregate decode tokens/s).
SEED_LLAMA_CPP_M4PRO = {1: 79, 2: 148, 4: 178, 8: 182, 16: 391}


def tiny_config() -> dict[str, Any]:
    return {**TINY_CONFIG, "vocab_size": len(tiny_vocab_rows())}


def build_models(config: dict[str, Any], dtype: mx.Dtype, with_mlx_lm: bool, seed: int = 0):
    """Our model with random weights, and mlx-lm's plamo3 model holding the same arrays."""
    mx.random.seed(seed)
    ours = Model(ModelArgs.from_dict(config))
    ours.set_dtype(dtype)
    mx.eval(ours.parameters())
    ours.eval()
    theirs = None
    if with_mlx_lm:
        from mlx_lm.models import plamo3 as mlx_lm_plamo3

        theirs = mlx_lm_plamo3.Model(mlx_lm_plamo3.ModelArgs.from_dict(config))
        theirs.load_weights(tree_flatten(ours.parameters()), strict=True)
        mx.eval(theirs.parameters())
        theirs.eval()
    return ours, theirs


def ours_generate(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    return generate(
        model,
        prompts,
        stop_ids=set(),
        sampling=SamplingConfig(max_new_tokens=new_tokens),
        pad_id=0,
        batch_size=len(prompts),
        share_prefix=False,
    )


def mlx_lm_generate(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    from mlx_lm.generate import BatchGenerator, generate_step

    if len(prompts) == 1:
        out = []
        for token, _ in generate_step(mx.array(prompts[0]), model, max_tokens=new_tokens):
            out.append(int(token))
        return [out]
    gen = BatchGenerator(
        model,
        max_tokens=new_tokens,
        stop_tokens=None,
        completion_batch_size=len(prompts),
        prefill_batch_size=len(prompts),
    )
    uids = gen.insert(prompts, [new_tokens] * len(prompts))
    results: dict[int, list[int]] = {uid: [] for uid in uids}
    while responses := gen.next_generated():
        for response in responses:
            if response.finish_reason != "stop":
                results[response.uid].append(int(response.token))
    gen.close()
    return [results[uid] for uid in uids]


def decode_rate(
    run: Callable[[int], Any], batch: int, new_tokens: int, repeats: int
) -> dict[str, Any]:
    """Median t(1) and t(N), and the decode rate batch x (N - 1) / (t(N) - t(1))."""
    run(2)  # warm-up: compiles kernels, allocates buffers
    short, full = [], []
    for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
        start = time.perf_counter()
        run(1)
        short.append(time.perf_counter() - start)
        start = time.perf_counter()
        run(new_tokens)
        full.append(time.perf_counter() - start)
    step = (median(full) - median(short)) / (new_tokens - 1)
    return {
        "t1_seconds": summary(short),
        "tN_seconds": summary(full),
        "seconds_per_step": step,
        "tokens_per_second": batch / step if step > 0 else float("nan"),
        "prefill_seconds": median(short),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=3, work_dir=False)
    add_shape_arg(parser)
    parser.add_argument("--models", default="tiny,real", help="comma-separated: tiny, real")
    parser.add_argument("--layers", type=int, default=2, help="layers of the real-width model")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bfloat16",
        help="weights and compute dtype of both implementations [%(default)s]",
    )
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=32, help="N: new tokens per row")
    parser.add_argument("--no-mlx-lm", action="store_true", help="skip mlx-lm's generation")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dtype = DTYPES[args.dtype]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"device: {mlx_device()}, dtype {args.dtype}, {blas_note()}")

    results: list[dict[str, Any]] = []
    rows = []
    for model_name in args.models.split(","):
        if model_name == "tiny":
            config = tiny_config()
        elif model_name == "real":
            config = real_config(args.layers, args.shape, torch_dtype=args.dtype)
        else:
            raise SystemExit(f"unknown model {model_name!r}")
        params = param_count(config)
        label = "tiny (4 x 64)" if model_name == "tiny" else shape_label(config, args.shape)
        ours, theirs = build_models(config, dtype, not args.no_mlx_lm)
        competitors = {"ours": (ours, ours_generate)}
        if theirs is not None:
            competitors["mlx_lm"] = (theirs, mlx_lm_generate)
        for batch in batch_sizes:
            key = mx.random.key(batch)
            prompts = mx.random.randint(
                4, config["vocab_size"], (batch, args.prompt_len), key=key
            ).tolist()
            same_tokens = None
            measured = {}
            for name, (model, generate_fn) in competitors.items():

                def run(n, model=model, generate_fn=generate_fn, prompts=prompts):
                    return generate_fn(model, prompts, n)

                measured[name] = decode_rate(run, batch, args.new_tokens, args.repeats)
                measured[name]["tokens"] = run(args.new_tokens)
            if "mlx_lm" in measured:
                same_tokens = measured["ours"]["tokens"] == measured["mlx_lm"]["tokens"]
            base = measured["ours"]["tokens_per_second"]
            for name, m in measured.items():
                tokens = m.pop("tokens")
                entry = {
                    "model": model_name,
                    "label": label,
                    "params": params["total"],
                    "implementation": name,
                    "batch": batch,
                    "same_tokens_as_mlx_lm": same_tokens,
                    "generated_tokens_row0": tokens[0][:16],
                    **m,
                }
                results.append(entry)
                rows.append(
                    [
                        label,
                        name,
                        batch,
                        m["prefill_seconds"],
                        m["seconds_per_step"] * 1000,
                        m["tokens_per_second"],
                        ratio(m["tokens_per_second"], base),
                        "-" if same_tokens is None else ("yes" if same_tokens else "no"),
                    ]
                )
            print(f"done: {label}, batch {batch}", flush=True)
        del ours, theirs
    print()
    print_table(
        [
            "model",
            "impl",
            "batch",
            "t(1) s",
            "ms/step",
            "decode tok/s",
            "vs ours",
            "same tokens",
        ],
        rows,
        title=f"Decode with the KV cache on {mlx_device()} ({args.dtype}, {blas_note()}; "
        f"prompt {args.prompt_len}, N = {args.new_tokens}, medians of {args.repeats})",
    )
    seed_rows = [[b, tps] for b, tps in SEED_LLAMA_CPP_M4PRO.items()]
    print()
    print_table(
        ["batch", "aggregate decode tok/s"],
        seed_rows,
        title="Reference (not run here): the study, llama.cpp Q8_0 PLaMo 3 2B, M4 Pro Metal",
    )
    write_report(
        args.out,
        NAME,
        {
            "models": args.models,
            "shape": args.shape,
            "layers": args.layers,
            "dtype": args.dtype,
            "batch_sizes": batch_sizes,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "device": mlx_device(),
            "blas": blas_note(),
        },
        {"runs": results, "seed_llama_cpp_m4pro_q8": SEED_LLAMA_CPP_M4PRO},
        [
            "decode rate = batch x (N - 1) / (t(N) - t(1)), medians over repeats",
            "random weights; no stop tokens, every row decodes N tokens",
            "the study's llama.cpp numbers were measured on other hardware and are not rerun",
        ],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
