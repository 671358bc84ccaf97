"""Tokenizer throughput on chat examples: encode, chat template, assistant mask.

Run from the repository root:
    python -m benchmarks.bench_tokenizer [--examples 1718] [--synthetic-size 32000]

Corpus: the bundled glaive rows (data/samples, or --glaive-dir) turned into chat
messages with the study's system prompt; without them, deterministic text made from the tiny
vocabulary's words. Vocabularies: the tiny test vocabulary, a synthetic one of --synthetic-size
pieces grown from the corpus (closer to a real unigram vocabulary's trie depth), and a real
checkpoint's with --tokenizer-dir. Workloads, over --examples conversations (the corpus cycled):
- encode/cold: each distinct conversation rendered and encoded once, segment cache cleared
  before each one (no reuse across conversations).
- encode/warm: the same with the cache kept (system prompts repeat across conversations).
- mask: `assistant_token_mask` over --examples conversations, as the data build runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, add_common_args, median, print_table, write_report
from convert.tiny_vocab import WORDS, tiny_tokenizer_config, tiny_vocab_rows, write_tiny_tokenizer
from mlx_plamo3.tokenizer import Plamo3Tokenizer

NAME = "bench_tokenizer"
SAMPLES_DIR = REPO_ROOT / "data" / "samples"
SEED_SYSTEM_PREFIX = (
    "You are a helpful assistant with access to the following tools. When the user's request "
    'requires a tool, respond with ONLY a JSON object {"name": <function-name>, "arguments": '
    "<args-object>}. If no tool is needed, answer normally.\nTools:\n"
)
SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "function_call": "assistant",
    "observation": "tool",
}
RAW_TURN = re.compile(r"(USER|ASSISTANT|FUNCTION RESPONSE):")
RAW_ROLES = {"USER": "user", "ASSISTANT": "assistant", "FUNCTION RESPONSE": "tool"}

Message = dict[str, str]


def sharegpt_messages(row: dict[str, Any]) -> list[Message]:
    """A LLaMA-Factory glaive row as chat messages under the study's system prompt."""
    messages = [{"role": "system", "content": SEED_SYSTEM_PREFIX + str(row.get("tools") or "[]")}]
    for turn in row["conversations"]:
        messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
    return messages


def raw_glaive_messages(row: dict[str, Any]) -> list[Message]:
    """A raw glaive {"system", "chat"} row as chat messages (turn markers split, text kept)."""
    system = row["system"].removeprefix("SYSTEM:").strip()
    messages = [{"role": "system", "content": system}]
    parts = RAW_TURN.split(row["chat"])
    for marker, text in zip(parts[1::2], parts[2::2], strict=True):
        content = text.replace("<|endoftext|>", "").strip()
        messages.append({"role": RAW_ROLES[marker], "content": content})
    return messages


def glaive_corpus(glaive_dir: Path) -> list[list[Message]]:
    conversations = []
    demo = glaive_dir / "llamafactory_glaive_toolcall_en_demo.json"
    if demo.is_file():
        conversations += [sharegpt_messages(row) for row in json.loads(demo.read_text())]
    sample = glaive_dir / "glaive-function-calling-v2.sample.jsonl"
    if sample.is_file():
        for line in sample.read_text().splitlines():
            conversations.append(raw_glaive_messages(json.loads(line)))
    return [c for c in conversations if any(m["role"] == "assistant" for m in c)]


def synthetic_corpus(count: int = 300, seed: int = 0) -> list[list[Message]]:
    """Deterministic chat text from the tiny vocabulary's words, for machines without glaive."""
    rng = random.Random(seed)

    def sentence(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    conversations = []
    for _ in range(count):
        tool = {"name": f"get_{rng.choice(WORDS)}", "description": sentence(8)}
        conversations.append(
            [
                {"role": "system", "content": SEED_SYSTEM_PREFIX + json.dumps(tool, indent=4)},
                {"role": "user", "content": sentence(rng.randint(8, 30))},
                {"role": "assistant", "content": json.dumps({"name": tool["name"]})},
                {"role": "tool", "content": json.dumps({"result": sentence(6)})},
                {"role": "assistant", "content": sentence(rng.randint(10, 40))},
            ]
        )
    return conversations


def synthetic_rows(texts: Sequence[str], size: int) -> list[list[object]]:
    """A unigram-shaped vocabulary of about `size` pieces grown from `texts`: frequent words
    (with their leading space) and their character n-grams, scored by log frequency."""
    base = tiny_vocab_rows()
    counts: Counter[str] = Counter()
    for text in texts:
        for word in re.findall(r" ?\w+| ?[^\w\s]+|\s+", text):
            counts[word] += 1
            for n in range(2, min(len(word), 8) + 1):
                for i in range(len(word) - n + 1):
                    counts[word[i : i + n]] += 1
    have = {row[0] for row in base}
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    extra = [
        [piece, round(math.log(count / total), 4), "NORMAL"]
        for piece, count in ranked
        if piece not in have and "<|plamo:" not in piece
    ]
    return base + extra[: max(0, size - len(base))]


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def measure(tokenizer: Plamo3Tokenizer, corpus: list[list[Message]], examples: int) -> list[dict]:
    cycled = [corpus[i % len(corpus)] for i in range(examples)]

    def encode_cold() -> int:
        tokens = 0
        for messages in corpus:
            tokenizer.cache_clear()
            tokens += len(tokenizer.apply_chat_template(messages))
        return tokens

    def encode_warm() -> int:
        tokenizer.cache_clear()
        return sum(len(tokenizer.apply_chat_template(messages)) for messages in corpus)

    def mask() -> int:
        tokenizer.cache_clear()
        return sum(len(tokenizer.assistant_token_mask(messages)[0]) for messages in cycled)

    results = []
    for name, fn, count in (
        ("encode/cold", encode_cold, len(corpus)),
        ("encode/warm", encode_warm, len(corpus)),
        ("mask", mask, len(cycled)),
    ):
        seconds, tokens = timed(fn)
        results.append(
            {
                "workload": name,
                "examples": count,
                "tokens": tokens,
                "seconds": round(seconds, 4),
                "tokens_per_s": round(tokens / seconds),
                "examples_per_s": round(count / seconds, 1),
                "mean_tokens": round(tokens / count, 1),
            }
        )
    return results


TABLE_COLUMNS = (
    ("vocab", "vocab"),
    ("size", "vocab_size"),
    ("workload", "workload"),
    ("examples", "examples"),
    ("mean tok", "mean_tokens"),
    ("seconds", "seconds"),
    ("tok/s", "tokens_per_s"),
    ("ex/s", "examples_per_s"),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=3, work_dir=False)
    parser.add_argument(
        "--glaive-dir", type=Path, default=SAMPLES_DIR, help="glaive rows [bundled samples]"
    )
    parser.add_argument("--tokenizer-dir", type=Path, help="a real checkpoint directory, if any")
    parser.add_argument("--examples", type=int, default=1718, help="conversations for `mask`")
    parser.add_argument(
        "--synthetic-size",
        type=int,
        default=32000,
        help="pieces of the synthetic vocabulary grown from the corpus; 0 to skip",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    corpus = glaive_corpus(args.glaive_dir) if args.glaive_dir.is_dir() else []
    corpus_name = f"glaive ({args.glaive_dir})" if corpus else "synthetic (tiny-vocabulary words)"
    if not corpus:
        corpus = synthetic_corpus()

    vocabularies: list[tuple[str, Plamo3Tokenizer]] = []
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer(Path(tmp))
        vocabularies.append(("tiny", Plamo3Tokenizer.from_pretrained(tmp)))
    if args.synthetic_size:
        texts = [m["content"] for messages in corpus for m in messages]
        rows = synthetic_rows(texts, args.synthetic_size)
        tokenizer = Plamo3Tokenizer([tuple(row) for row in rows], tiny_tokenizer_config())
        vocabularies.append(("synthetic", tokenizer))
    if args.tokenizer_dir:
        vocabularies.append(("checkpoint", Plamo3Tokenizer.from_pretrained(args.tokenizer_dir)))

    table = []
    for name, tokenizer in vocabularies:
        runs = [measure(tokenizer, corpus, args.examples) for _ in range(args.repeats)]
        for per_workload in zip(*runs, strict=True):
            seconds = median([r["seconds"] for r in per_workload])
            first = per_workload[0]
            table.append(
                {
                    **first,
                    "vocab": name,
                    "vocab_size": tokenizer.vocab_size,
                    "seconds": round(seconds, 4),
                    "seconds_runs": [r["seconds"] for r in per_workload],
                    "tokens_per_s": round(first["tokens"] / seconds),
                    "examples_per_s": round(first["examples"] / seconds, 1),
                }
            )
    print_table(
        [header for header, _ in TABLE_COLUMNS],
        [[row[key] for _, key in TABLE_COLUMNS] for row in table],
        title=f"Tokenizer throughput (medians of {args.repeats}), corpus: {corpus_name}, "
        f"{len(corpus)} conversations",
    )
    write_report(
        args.out,
        NAME,
        {
            "corpus": corpus_name,
            "conversations": len(corpus),
            "examples": args.examples,
            "synthetic_size": args.synthetic_size,
            "tokenizer_dir": None if args.tokenizer_dir is None else str(args.tokenizer_dir),
        },
        {"rows": table},
        ["encode/cold clears the segment cache before each conversation"],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
