"""The overhead of schema-constrained tool calls (eval.constrain) per token, side by side with
unconstrained decoding in one run.

Run from the repository root:
    python -m benchmarks.bench_constrain [--shape real] [--per-category 20] [--repeats 3]

Rows: BFCL v4's questions (`eval.bfcl`, the first --per-category of every category): their tools
are JSON Schemas with nested objects, arrays and enums, the hardest grammars the eval builds.

Two measurements:
1. Decoding, end to end: the tiny random checkpoint (convert/tiny.py) generates greedily for
   every row's prompt, batched as the eval batches, unconstrained, in `auto` (the eval's
   --constrain: the tiny model never opens a call, so only the first token is masked) and in
   `required` (every token masked by the call grammar). Microseconds per row-step (one row's
   token in one batched decode step; finished rows keep stepping until their batch ends), so
   modes whose replies end at different lengths compare per unit of work.
2. The mask alone, at a vocabulary of --shape's size (real: PLaMo 3's 107,520 ids; small: 1,024):
   the tiny vocabulary topped up with made-up pieces (random words, numbers, CJK characters) to
   that size, since the real vocabulary is not public. Each row's gold reply (BFCL's first
   acceptable answer) is replayed through an `auto` constraint token by token: microseconds per
   token for `allowed()` + `accept()` (llguidance), and for sending the disallowed logits of a
   batch to -inf (`mlx_plamo3.generate.constrain_logits`). The replay also counts gold replies the
   grammar refuses (a gold argument outside its tool's schema).
"""

from __future__ import annotations

import argparse
import string
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx.core as mx
import numpy as np

from benchmarks.common import (
    WorkDir,
    add_common_args,
    add_shape_arg,
    blas_note,
    median,
    mlx_device,
    print_table,
    real_config,
    summary,
    write_report,
)
from convert.tiny import write_tiny_checkpoint
from eval.bfcl import case_row, load_cases
from eval.constrain import AUTO, REQUIRED, constraint_factory
from eval.harness import prompt_messages
from mlx_plamo3.generate import (
    SamplingConfig,
    batch_order,
    constrain_logits,
    generate,
    stop_token_ids,
)
from mlx_plamo3.loading import load
from mlx_plamo3.tokenizer import VOCAB_FILE, Plamo3Tokenizer, read_vocab

NAME = "bench_constrain"
MODES = ("unconstrained", AUTO, REQUIRED)
CJK_FIRST, CJK_COUNT = 0x4E00, 20_000
LOGIT_BATCH = 8
MASK_EVERY = 7


def padded_tokenizer(tiny_dir: Path, size: int, seed: int = 0) -> Plamo3Tokenizer:
    """The tiny vocabulary topped up to `size` ids with made-up NORMAL pieces."""
    rows = read_vocab(tiny_dir / VOCAB_FILE)
    seen = {piece for piece, _, _ in rows}
    rng = np.random.default_rng(seed)
    letters = list(string.ascii_letters + string.digits + "_-.,:/ ")
    cjk = [chr(CJK_FIRST + i) for i in range(CJK_COUNT)]
    while len(rows) < size:
        if rng.random() < 0.2:
            piece = "".join(rng.choice(cjk, size=int(rng.integers(1, 4))))
        else:
            piece = "".join(rng.choice(letters, size=int(rng.integers(2, 10))))
        if piece not in seen:
            seen.add(piece)
            rows.append((piece, -float(len(piece)), "NORMAL"))
    config = {"add_bos_token": False}
    return Plamo3Tokenizer(rows, config, source=f"{tiny_dir} padded to {size}")


class Timed:
    """A constraint that adds the seconds spent in its `allowed` and `accept` to `clock`."""

    def __init__(self, inner, clock: list[float]) -> None:
        self.inner, self.clock = inner, clock

    def allowed(self) -> np.ndarray | None:
        start = time.perf_counter()
        mask = self.inner.allowed()
        self.clock[0] += time.perf_counter() - start
        return mask

    def accept(self, token: int) -> None:
        start = time.perf_counter()
        self.inner.accept(token)
        self.clock[0] += time.perf_counter() - start


def row_steps(outputs: list[list[int]], order: list[int], batch: int, max_new: int) -> int:
    """Rows x decode steps the batches ran: a batch steps until its longest reply stops."""
    total = 0
    for start in range(0, len(order), batch):
        lengths = [len(outputs[i]) for i in order[start : start + batch]]
        total += len(lengths) * min(max_new, max(lengths) + 1)
    return total


def decode_times(model, tokenizer, rows, args) -> dict[str, Any]:
    """Seconds, generated tokens and row-steps per mode, over --repeats, modes rotating."""
    prompts = [
        tokenizer.apply_chat_template(prompt_messages(r, False), add_generation_prompt=True)
        for r in rows
    ]
    stops = stop_token_ids(tokenizer)
    factories = {
        mode: [constraint_factory(tokenizer, r["tools"], mode) for r in rows] for mode in MODES[1:]
    }

    clocks: dict[str, list[list[float]]] = {m: [] for m in MODES}

    def run(mode: str, max_new_tokens: int) -> list[list[int]]:
        constraints, clock = None, [0.0]
        if mode in factories:
            constraints = [Timed(factory(), clock) for factory in factories[mode]]
        clocks[mode].append(clock)  # its seconds add up while generate runs
        return generate(
            model,
            prompts,
            stops,
            SamplingConfig(max_new_tokens=max_new_tokens),
            batch_size=args.batch_size,
            constraints=constraints,
        )

    for mode in MODES:  # warm-up: kernels, compiled grammars
        run(mode, 4)
        clocks[mode].clear()
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    tokens: dict[str, int] = {}
    steps: dict[str, int] = {}
    order = batch_order(prompts, args.batch_size)
    for repeat in range(args.repeats):
        for mode in MODES[repeat % len(MODES) :] + MODES[: repeat % len(MODES)]:
            start = time.perf_counter()
            outputs = run(mode, args.max_new_tokens)
            seconds[mode].append(time.perf_counter() - start)
            tokens[mode] = sum(map(len, outputs))
            steps[mode] = row_steps(outputs, order, args.batch_size, args.max_new_tokens)
    return {
        mode: {
            "seconds": summary(seconds[mode]),
            "generated_tokens": tokens[mode],
            "row_steps": steps[mode],
            "us_per_row_step": median(seconds[mode]) / steps[mode] * 1e6,
            # the part of it inside the constraints (allowed + accept), immune to machine load
            "grammar_us_per_row_step": median([c[0] for c in clocks[mode]]) / steps[mode] * 1e6,
        }
        for mode in MODES
    }


class FixedMask:
    """A constraint whose mask is given: times `constrain_logits` without the grammar."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def allowed(self) -> np.ndarray:
        return self.mask

    def accept(self, token: int) -> None:
        del token


def mask_costs(tokenizer: Plamo3Tokenizer, rows, vocab: int) -> dict[str, Any]:
    """Per-token microseconds of the grammar (allowed + accept) and of masking a batch."""
    grammar_us: list[float] = []
    refused, replayed = [], 0
    seen_masks: list[np.ndarray] = []  # every MASK_EVERY-th mask of the replay, for masking
    for row in rows:
        if not row["gold"]:
            continue
        factory = constraint_factory(tokenizer, row["tools"], AUTO)
        factory()  # compile (cached) outside the timing
        constraint = factory()
        replayed += 1
        for token in tokenizer.encode(row["gold"], add_special_tokens=False):
            start = time.perf_counter()
            allowed = constraint.allowed()
            if allowed is not None and not allowed[token]:
                refused.append(row["id"])
                break
            constraint.accept(token)
            grammar_us.append((time.perf_counter() - start) * 1e6)
            if allowed is not None and len(grammar_us) % MASK_EVERY == 0:
                seen_masks.append(allowed)
    # Masking costs depend on the mask's pattern (a scattered one defeats branch prediction),
    # so the batch is masked with the replay's own masks, a different set each step.
    logits = mx.random.normal((LOGIT_BATCH, vocab))
    masking_us = []
    for step in range(50):
        picked = [seen_masks[(step + row) % len(seen_masks)] for row in range(LOGIT_BATCH)]
        start = time.perf_counter()
        mx.eval(constrain_logits(logits, list(map(FixedMask, picked))))
        masking_us.append((time.perf_counter() - start) * 1e6)
    return {
        "vocab_size": vocab,
        "gold_replies_replayed": replayed,
        "gold_replies_refused": refused,
        "tokens_timed": len(grammar_us),
        "grammar_us_per_token": summary(grammar_us) | {"p90": float(np.percentile(grammar_us, 90))},
        "masking_us_per_step": summary(masking_us[5:]) | {"batch": LOGIT_BATCH},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=3)
    add_shape_arg(parser)
    parser.add_argument(
        "--per-category", type=int, default=10, help="BFCL questions per category [10]"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    parser.add_argument(
        "--max-new-tokens", type=int, default=48, help="greedy tokens per reply at most"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = [case_row(c) for c in load_cases(limit_per_category=args.per_category)]
    vocab = real_config(shape=args.shape)["vocab_size"]
    with WorkDir(args.work_dir, "bench_constrain_") as work:
        tiny_dir = write_tiny_checkpoint(work / "tiny", seed=0, force=True)
        model, tokenizer = load(tiny_dir)
        padded = padded_tokenizer(tiny_dir, max(vocab, len(tokenizer)))
    print(f"{len(rows)} BFCL rows; decoding on {mlx_device()} ({blas_note()})", flush=True)
    decoding = decode_times(model, tokenizer, rows, args)
    base = decoding["unconstrained"]["us_per_row_step"]
    print_table(
        ["mode", "median s", "tokens", "row-steps", "µs/row-step", "overhead µs", "in grammar µs"],
        [
            [
                mode,
                r["seconds"]["median"],
                r["generated_tokens"],
                r["row_steps"],
                r["us_per_row_step"],
                r["us_per_row_step"] - base,
                r["grammar_us_per_row_step"],
            ]
            for mode, r in decoding.items()
        ],
        title=f"Greedy decoding of {len(rows)} BFCL prompts, tiny random model, batch "
        f"{args.batch_size}, {args.max_new_tokens} new tokens at most, median of {args.repeats}",
    )
    masks = mask_costs(padded, rows, len(padded))
    grammar = masks["grammar_us_per_token"]
    print()
    print_table(
        ["part", "median µs", "p90 µs", "max µs", "samples"],
        [
            [
                "grammar: allowed() + accept(), per token",
                grammar["median"],
                grammar["p90"],
                grammar["max"],
                masks["tokens_timed"],
            ],
            [
                f"logits to -inf, per step (batch {LOGIT_BATCH})",
                masks["masking_us_per_step"]["median"],
                None,
                masks["masking_us_per_step"]["max"],
                len(masks["masking_us_per_step"]["values"]),
            ],
        ],
        title=f"The mask at a {masks['vocab_size']:,}-id vocabulary, replaying "
        f"{masks['gold_replies_replayed']} BFCL gold calls ({len(masks['gold_replies_refused'])} "
        "refused by the grammar)",
    )
    write_report(
        args.out,
        NAME,
        {
            "shape": args.shape,
            "rows": f"BFCL v4, {args.per_category} questions per category",
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "device": mlx_device(),
            "blas": blas_note(),
        },
        {"decoding": decoding, "mask": masks},
        [
            "decoding: the tiny random model; auto masks only its first token (it never opens "
            "a call), required masks every token",
            "mask: the tiny vocabulary padded with made-up pieces to the shape's vocabulary "
            "size; llguidance's cost depends on the pieces, so the real vocabulary may differ",
        ],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
