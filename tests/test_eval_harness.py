"""The MLX eval harness: records in the seed's shape, batching changes nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from commands.main import main as cli_main
from eval.harness import FEWSHOT_MESSAGES, prompt_messages, run_eval
from eval.scoring import summarize
from mlx_plamo3 import load

SEED_SUMMARY_KEYS = {
    "condition",
    "n_call",
    "n_nocall",
    "parse_rate",
    "func_name_acc",
    "args_exact_match",
    "false_call_rate",
    "minutes",
}


def eval_row(question: str, kind: str, gold: str) -> dict:
    system = 'You are a helpful assistant.\nTools:\n{"name": "get_time", "parameters": {}}'
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": gold},
        ],
        "kind": kind,
        "gold": gold,
        "tools": [{"name": "get_time", "parameters": {}}],
    }


ROWS = [
    eval_row(
        f"What time is it in city number {i}?", "call", '{"name": "get_time", "arguments": {}}'
    )
    for i in range(5)
] + [eval_row("Tell me a joke about cats.", "nocall", "Why did the cat ...")]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_mlx_dir):
    return load(tiny_mlx_dir)


def test_records_have_the_seed_shape(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    records = run_eval(model, tokenizer, ROWS, condition="base", max_new_tokens=8)
    assert SEED_SUMMARY_KEYS <= set(records["summary"])
    assert (records["summary"]["n_call"], records["summary"]["n_nocall"]) == (5, 1)
    for row, source in zip(records["rows"], ROWS, strict=True):
        assert {"kind", "question", "gold", "pred"} <= set(row)
        assert row["question"] == source["messages"][1]["content"]
        assert "<|plamo:tag|>" not in row["pred"]
    rescored = summarize(records["rows"], "study", condition="base", minutes=0)
    assert rescored["parse_rate"] == records["summary"]["parse_rate"]


def test_batched_prefix_reuse_equals_sequential(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    fast = run_eval(model, tokenizer, ROWS, condition="base", batch_size=4, max_new_tokens=12)
    slow = run_eval(
        model,
        tokenizer,
        ROWS,
        condition="base",
        batch_size=1,
        max_new_tokens=12,
        share_prefix=False,
    )
    assert [r["pred"] for r in fast["rows"]] == [r["pred"] for r in slow["rows"]]


def test_fewshot_inserts_the_seed_turns_after_the_system_message():
    messages = prompt_messages(ROWS[0], fewshot=True)
    assert messages[0]["role"] == "system"
    assert messages[1:5] == FEWSHOT_MESSAGES
    assert messages[5]["content"] == ROWS[0]["messages"][1]["content"]
    assert len(messages) == 6


def test_eval_cli_writes_records_atomically(tiny_mlx_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (data_dir / "train.jsonl").write_text("")
    out = tmp_path / "results" / "base.json"
    result = CliRunner().invoke(
        cli_main,
        [
            "eval",
            "--condition",
            "base",
            "--model",
            str(tiny_mlx_dir),
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--max-new-tokens",
            "6",
        ],
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["summary"]["condition"] == "base"
    assert len(written["rows"]) == len(ROWS)
    assert [p.name for p in out.parent.iterdir()] == ["base.json"]


def test_eval_cli_needs_an_adapter_for_lora(tiny_mlx_dir):
    result = CliRunner().invoke(
        cli_main, ["eval", "--condition", "lora", "--model", str(tiny_mlx_dir)]
    )
    assert result.exit_code != 0 and "--adapter" in result.output
