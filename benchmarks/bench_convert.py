"""Conversion of a full-size random PLaMo 3 2B checkpoint: `python -m convert` vs `mlx_lm.convert`.

Run from the repository root:
    python -m benchmarks.bench_convert [--repeats 3] [--work-dir DIR] [--quantize]

The input is a random checkpoint with the real 2B shapes (benchmarks/common.py) in the Hugging
Face layout: bf16 safetensors, HF key names, norm weights stored as deltas, sharded like the real
checkpoint (attention, MLP, embedding and norms in separate shards of at most 2 GiB: five shards
at the real shape) with a model.safetensors.index.json. Writing it is not timed.

Each converter runs as a child process, alternating which goes first, with its output directory
removed (and the page cache flushed with `sync`) between runs; measured per run: wall time and
peak resident memory (the child's maxrss from wait4, and the summed RSS of the child's process
tree sampled every 50 ms with psutil). After the runs, the two outputs of the last repeat are
compared tensor by tensor.

mlx_lm.convert loads the tokenizer with transformers' AutoTokenizer, which cannot build PLaMo's
tokenizer without PFN's remote code (tokenization_plamo.py, not redistributable here). So
mlx_lm reads a sibling input directory whose weight shards, index and config.json are symlinks
to the same files, plus a small standard fast tokenizer (tokenizer.json, WordLevel) in place of
PLaMo's tokenizer.jsonl. Tokenizer loading is a negligible part of either conversion.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    REAL_2B_SOURCES,
    WorkDir,
    add_common_args,
    add_shape_arg,
    gib,
    median,
    param_count,
    print_table,
    python_command,
    ratio,
    real_config,
    run_child,
    summary,
    write_report,
)
from convert.tiny_vocab import write_tiny_tokenizer

NAME = "bench_convert"
# The real checkpoint's layout (benchmarks/common.py, [shards]): tensors grouped by kind
# (attention, MLP, embedding, norms), each group cut into shards of at most 2 GiB.
SHARD_KINDS = (
    ("qkv_proj.weight", "o_proj.weight"),
    ("gate_up_proj.weight", "down_proj.weight"),
    ("embed_tokens.weight", "lm_head.weight"),
    ("norm.weight",),
)
MAX_SHARD_BYTES = 2 * 2**30
NORM_NAMES = ("pre_mixer_norm", "post_mixer_norm", "pre_mlp_norm", "post_mlp_norm")


def hf_tensor_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of a PLaMo 3 HF checkpoint, in checkpoint order."""
    hidden, inter, head_dim = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    shapes = [("model.embed_tokens.weight", (config["vocab_size"], hidden))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.layers.{i}"
        shapes += [
            (f"{p}.mixer.qkv_proj.weight", ((heads + 2 * kv_heads) * head_dim, hidden)),
            (f"{p}.mixer.o_proj.weight", (hidden, heads * head_dim)),
            (f"{p}.mixer.q_norm.weight", (head_dim,)),
            (f"{p}.mixer.k_norm.weight", (head_dim,)),
            (f"{p}.mlp.gate_up_proj.weight", (2 * inter, hidden)),
            (f"{p}.mlp.down_proj.weight", (hidden, inter)),
        ]
        shapes += [(f"{p}.{norm}.weight", (hidden,)) for norm in NORM_NAMES]
    shapes.append(("model.norm.weight", (hidden,)))
    if not config.get("tie_word_embeddings", True):
        shapes.append(("lm_head.weight", (config["vocab_size"], hidden)))
    return shapes


def shard_layout(
    shapes: list[tuple[str, tuple[int, ...]]],
) -> list[list[tuple[str, tuple[int, ...]]]]:
    """The tensors split into shards the way the real checkpoint is (bf16 sizes)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = []
    for suffixes in SHARD_KINDS:
        size = MAX_SHARD_BYTES  # start each kind in a new shard
        for key, shape in shapes:
            if not key.endswith(suffixes):
                continue
            nbytes = 2 * math.prod(shape)
            if size + nbytes > MAX_SHARD_BYTES:
                shards.append([])
                size = 0
            shards[-1].append((key, shape))
            size += nbytes
    placed = sum(len(shard) for shard in shards)
    if placed != len(shapes):
        raise ValueError(f"{len(shapes) - placed} tensors fit none of the shard kinds")
    return shards


def write_random_checkpoint(out_dir: Path, config: dict[str, Any], seed: int = 0) -> dict:
    """A random bf16 HF-layout checkpoint, sharded like the real one, with an index; stats."""
    import mlx.core as mx

    out_dir.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    shapes = hf_tensor_shapes(config)
    shards = shard_layout(shapes)
    weight_map, total = {}, 0
    for index, shard in enumerate(shards):
        name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        arrays = {}
        for key, shape in shard:
            if len(shape) == 1:  # a norm: stored as a small delta from its offset
                value = 0.02 * mx.random.normal(shape)
            else:
                value = mx.random.normal(shape) * (shape[-1] ** -0.5)
            arrays[key] = value.astype(mx.bfloat16)
            total += 2 * math.prod(shape)
        mx.save_safetensors(str(out_dir / name), arrays, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(arrays, name)
        del arrays
    index_doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    write_tiny_tokenizer(out_dir)
    return {"shards": len(shards), "bytes": total, "tensors": len(shapes)}


def write_fast_tokenizer(out_dir: Path) -> None:
    """A small standard `tokenizers` WordLevel tokenizer AutoTokenizer loads without remote code."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<|plamo:unk|>", "<|plamo:bos|>", "<|plamo:eos|>", "<|plamo:pad|>"]
    words = ["the", "of", "and", "to", "a", "in", "is", "it", "you", "tool", "call", "name"]
    vocab = {token: i for i, token in enumerate(specials + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[0]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": specials[0],
        "bos_token": specials[1],
        "eos_token": specials[2],
        "pad_token": specials[3],
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def mlx_lm_input(hf_dir: Path, out_dir: Path) -> Path:
    """The same weights (symlinked) with a tokenizer mlx_lm can load."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in hf_dir.iterdir():
        if path.suffix == ".safetensors" or path.name in ("model.safetensors.index.json",):
            (out_dir / path.name).symlink_to(path.resolve())
    shutil.copy2(hf_dir / "config.json", out_dir / "config.json")
    write_fast_tokenizer(out_dir)
    return out_dir


def converter_commands(
    hf_dir: Path, mlx_lm_dir: Path, out_dir: Path, quantize: bool
) -> dict[str, tuple[list[str], Path]]:
    ours_out, theirs_out = out_dir / "ours", out_dir / "mlx_lm"
    ours = python_command("-m", "convert", "--hf-path", str(hf_dir), "--mlx-path", str(ours_out))
    theirs = python_command(
        "-m", "mlx_lm", "convert", "--hf-path", str(mlx_lm_dir), "--mlx-path", str(theirs_out)
    )
    if quantize:
        ours += ["--quantize", "--q-bits", "4", "--q-group-size", "64"]
        theirs += ["-q", "--q-bits", "4", "--q-group-size", "64"]
    else:
        theirs += ["--dtype", "bfloat16"]
    return {"python -m convert": (ours, ours_out), "mlx_lm.convert": (theirs, theirs_out)}


def compare_outputs(ours: Path, theirs: Path) -> dict[str, Any]:
    """Tensor-by-tensor comparison of two converted directories (arrays load lazily)."""
    import mlx.core as mx

    def tensors(path: Path) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for file in sorted(path.glob("*.safetensors")):
            found |= mx.load(str(file))
        return found

    mine, other = tensors(ours), tensors(theirs)
    only_ours, only_theirs = sorted(set(mine) - set(other)), sorted(set(other) - set(mine))
    different = []
    for key in sorted(set(mine) & set(other)):
        a, b = mine[key], other[key]
        if a.shape != b.shape or a.dtype != b.dtype or not bool(mx.array_equal(a, b)):
            different.append(key)
    return {
        "tensors_compared": len(set(mine) & set(other)),
        "only_ours": only_ours[:20],
        "only_mlx_lm": only_theirs[:20],
        "different": different[:20],
        "different_count": len(different),
        "identical": not (only_ours or only_theirs or different),
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def flush_page_cache_writes() -> None:
    if hasattr(os, "sync"):
        os.sync()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=3)
    add_shape_arg(parser)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers (default: all 24)")
    parser.add_argument("--quantize", action="store_true", help="convert to 4-bit (group 64)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per conversion")
    parser.add_argument("--generate-only", type=Path, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args(argv)
    started = time.perf_counter()

    config = real_config(args.layers, args.shape)
    if args.generate_only is not None:
        # Worker: the parent stays small, so its memory never shows in a converter's numbers.
        print(json.dumps(write_random_checkpoint(args.generate_only, config)))
        return 0
    params = param_count(config)
    print(f"config: {json.dumps({k: config[k] for k in sorted(config) if k != 'architectures'})}")
    print(f"parameters: {params['total']:,} ({params['total'] / 1e9:.3f} B); sources:")
    for name, source in REAL_2B_SOURCES.items():
        print(f"  [{name}] {source}")

    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs: dict[str, list[dict[str, Any]]] = {}
    with WorkDir(args.work_dir, "bench_convert_") as work:
        free = shutil.disk_usage(work).free
        need = 2 * params["total"] * (3 if not args.quantize else 2)
        if free < need:
            print(f"warning: {gib(free)} GiB free in {work}; about {gib(need)} GiB needed")
        hf_dir, mlx_lm_dir, out_dir = work / "hf", work / "hf_for_mlx_lm", work / "out"
        gen_start = time.perf_counter()
        if not (hf_dir / "model.safetensors.index.json").exists():
            generate = python_command("-m", "benchmarks.bench_convert", "--generate-only")
            generate += [str(hf_dir), "--shape", args.shape]
            generate += [] if args.layers is None else ["--layers", str(args.layers)]
            result = run_child(generate)
            if result.returncode != 0:
                raise SystemExit(f"writing the random checkpoint failed:\n{result.output[-3000:]}")
            stats = json.loads(result.output.strip().splitlines()[-1])
        else:
            stats = {"reused": True}
        stats["seconds"] = time.perf_counter() - gen_start
        stats["input_bytes"] = dir_bytes(hf_dir)
        print(f"random checkpoint: {stats}")
        if not mlx_lm_dir.exists():
            mlx_lm_input(hf_dir, mlx_lm_dir)
        commands = converter_commands(hf_dir, mlx_lm_dir, out_dir, args.quantize)
        names = list(commands)
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else names[::-1]
            for name in order:
                command, target = commands[name]
                shutil.rmtree(target, ignore_errors=True)
                flush_page_cache_writes()
                result = run_child(command, env=env, timeout=args.timeout)
                if result.returncode != 0:
                    print(result.output[-4000:])
                    raise SystemExit(f"{name} failed with exit code {result.returncode}")
                flush_page_cache_writes()
                run = {
                    "repeat": repeat,
                    "seconds": result.seconds,
                    "peak_rss_bytes": result.peak_rss_bytes,
                    "peak_tree_rss_bytes": result.peak_tree_rss_bytes,
                    "output_bytes": dir_bytes(target),
                }
                runs.setdefault(name, []).append(run)
                print(
                    f"repeat {repeat} {name}: {result.seconds:.1f} s, peak RSS "
                    f"{gib(result.peak_rss_bytes)} GiB (tree {gib(result.peak_tree_rss_bytes)})",
                    flush=True,
                )
        comparison = compare_outputs(commands[names[0]][1], commands[names[1]][1])
        print(f"outputs compared: {comparison}")

    results: dict[str, Any] = {"input": stats, "comparison": comparison, "converters": {}}
    rows = []
    base = median([r["seconds"] for r in runs[names[0]]])
    base_rss = median([r["peak_rss_bytes"] for r in runs[names[0]]])
    for name in names:
        seconds = [r["seconds"] for r in runs[name]]
        rss = [r["peak_rss_bytes"] for r in runs[name]]
        tree = [r["peak_tree_rss_bytes"] for r in runs[name]]
        results["converters"][name] = {
            "command": " ".join(commands[name][0][1:]),
            "seconds": summary(seconds),
            "peak_rss_bytes": summary(rss),
            "peak_tree_rss_bytes": summary(tree),
            "output_bytes": runs[name][-1]["output_bytes"],
            "runs": runs[name],
        }
        rows.append(
            [
                name,
                len(seconds),
                median(seconds),
                ratio(median(seconds), base),
                gib(median(rss)),
                gib(median(tree)),
                ratio(median(rss), base_rss),
                gib(runs[name][-1]["output_bytes"]),
            ]
        )
    mode = "4-bit" if args.quantize else "bf16"
    print()
    print_table(
        [
            "converter",
            "runs",
            "median s",
            "time vs ours",
            "peak RSS GiB",
            "tree RSS GiB",
            "RSS vs ours",
            "output GiB",
        ],
        rows,
        title=f"Conversion of a random {params['total'] / 1e9:.2f}B PLaMo 3 checkpoint "
        f"({stats['input_bytes'] / 2**30:.2f} GiB bf16 in, {mode} out)",
    )
    notes = [
        "mlx_lm reads the same weight files through symlinks, with a standard fast tokenizer "
        "in place of PLaMo's (AutoTokenizer cannot load tokenizer.jsonl without PFN's remote "
        "code).",
        "Checkpoint generation is not timed.",
        "peak RSS = the child's maxrss (wait4); tree RSS = psutil's summed RSS of the child "
        "and its children, sampled every 50 ms.",
    ]
    write_report(
        args.out,
        NAME,
        {
            "shape": args.shape,
            "config": config,
            "params": params,
            "repeats": args.repeats,
            "quantize": args.quantize,
            "sources": REAL_2B_SOURCES,
        },
        results,
        notes,
        started,
    )
    print(f"whole benchmark: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
