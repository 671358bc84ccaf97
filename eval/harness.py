"""The 52-case tool-calling evaluation, generated in MLX: the study's prompts and decoding
(greedy, 160 new tokens, cut at <|plamo:tag|>), batched with the shared prompt prefix run once.
With `constrain`, each reply is decoded under its row's tools in `auto` mode (eval.constrain):
free text stays free, a reply that opens a call is held to the tool names and their schemas."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from data.call_format import DEFAULT_CALL_FORMAT
from eval.bfcl import SUITE, is_bfcl_row
from eval.bfcl_scoring import summarize_bfcl
from eval.constrain import AUTO, constraint_factory
from eval.scoring import summarize
from mlx_plamo3.generate import SamplingConfig, generate, stop_token_ids
from mlx_plamo3.memory import activation_dtype, generation_batch_size

CONDITIONS = ("base", "base-fewshot", "lora")
# The question sets `mlx-plamo eval` runs: the study's frozen 52 (the default), BFCL v4.
SUITES = ("frozen", SUITE)
# What a suite's rows carry into their records unchanged (BFCL: where each question comes from,
# and what its checker needs to score the reply again).
SUITE_ROW_KEYS = ("suite", "category", "id", "functions", "ground_truth")
# The study's decoding budget per answer (greedy).
STUDY_MAX_NEW_TOKENS = 160
# Questions generated together unless the memory plan lowers it. Decode batches well and prefill
# does not: at the 2B width over BFCL, 32 gave 7.3x the one-at-a-time throughput with 160-token
# answers and 2.7x with 32-token ones (BENCHMARKS.md, "The BFCL suite").
EVAL_BATCH_SIZE = 32
TURN_END = "<|plamo:tag|>"

# The study's 2-shot turns, inserted after the system message for `base-fewshot`.
FEWSHOT_MESSAGES: list[dict[str, str]] = [
    {"role": "user", "content": "What's the weather like in Tokyo today?"},
    {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"location": "Tokyo"}}'},
    {"role": "user", "content": "Thanks! And who wrote 'Kokoro'?"},
    {
        "role": "assistant",
        "content": "'Kokoro' was written by Natsume Soseki, first published in 1914.",
    },
]


def prompt_messages(row: dict[str, Any], fewshot: bool) -> list[dict[str, str]]:
    """System and user turns of an eval row (its gold assistant turn dropped)."""
    messages = [m for m in row["messages"] if m["role"] != "assistant"]
    if fewshot:
        messages = messages[:1] + FEWSHOT_MESSAGES + messages[1:]
    return messages


def question_of(row: dict[str, Any]) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def gold_of(row: dict[str, Any]) -> str:
    if "gold" in row:
        return row["gold"]
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "assistant")


def cut_at_turn_end(text: str) -> str:
    return text.split(TURN_END, 1)[0]


def run_eval(
    model,
    tokenizer,
    eval_rows: Sequence[dict[str, Any]],
    condition: str,
    fewshot: bool = False,
    limit: int | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    max_new_tokens: int = STUDY_MAX_NEW_TOKENS,
    share_prefix: bool = True,
    progress: Callable[[int], None] | None = None,
    memory_available: int | None = None,
    constrain: bool = False,
    call_format: str = DEFAULT_CALL_FORMAT,
) -> dict[str, Any]:
    """Records `{"summary", "rows"}` for the eval rows (the first `limit`, if given).

    `condition` labels the run; `fewshot` inserts the study's 2-shot turns. With
    `memory_available` (bytes beyond the loaded model), the batch size is lowered until the
    predicted KV cache, prefill and logits of a batch fit in it. With `constrain`, replies are
    decoded under each row's tools (`eval.constrain`, mode auto, calls in `call_format`, the
    adapter's); `summary.decoding` records it, with the notes on schemas the grammar had to
    loosen."""
    rows = list(eval_rows)[:limit] if limit else list(eval_rows)
    prompts = [
        tokenizer.apply_chat_template(prompt_messages(r, fewshot), add_generation_prompt=True)
        for r in rows
    ]
    if memory_available is not None and prompts:
        batch_size = generation_batch_size(
            model.args,
            activation_dtype(model),
            memory_available,
            max(len(p) for p in prompts),
            max_new_tokens,
            batch_size,
        )
    constraints, notes = None, set()
    if constrain:
        factories = [
            constraint_factory(tokenizer, r.get("tools", []), AUTO, call_format) for r in rows
        ]
        constraints = [factory() for factory in factories]
        notes = {note for factory in factories for note in factory.notes}
    started = time.perf_counter()
    outputs = generate(
        model,
        prompts,
        stop_token_ids(tokenizer),
        SamplingConfig(max_new_tokens=max_new_tokens),
        pad_id=tokenizer.pad_token_id or 0,
        batch_size=batch_size,
        share_prefix=share_prefix,
        progress=progress,
        constraints=constraints,
    )
    minutes = (time.perf_counter() - started) / 60
    records = [
        {
            "kind": row["kind"],
            "question": question_of(row),
            "gold": gold_of(row),
            "pred": cut_at_turn_end(tokenizer.decode(ids)),
            # The generated ids (stop token excluded) let the PyTorch check compare exactly.
            "pred_ids": ids,
            "tools": row.get("tools", []),
            **{key: row[key] for key in SUITE_ROW_KEYS if key in row},
        }
        for row, ids in zip(rows, outputs, strict=True)
    ]
    summary = summarize(records, "study", condition=condition, minutes=round(minutes, 2))
    summary["strict"] = summarize(records, "strict", condition=condition)
    if any(map(is_bfcl_row, records)):
        bfcl = summarize_bfcl(records)
        summary["bfcl"] = {"categories": bfcl["categories"], "overall": bfcl["overall"]}
    summary["decoding"] = {
        "fewshot": fewshot,
        "greedy": True,
        "max_new_tokens": max_new_tokens,
        "stop": TURN_END,
        "batch_size": batch_size,
        "constrained": constrain,
    }
    if notes:
        summary["decoding"]["constraint_notes"] = sorted(notes)
    return {"summary": summary, "rows": records}
