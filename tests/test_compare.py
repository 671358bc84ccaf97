"""Per-question comparison of records files. Every expected flip below was checked by reading
the two fixture files' rows by hand (row numbers given)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.cli import compare_records, print_comparison
from eval.compare import compare_rows, format_comparison

SEED = Path(__file__).parent / "fixtures" / "seed-results"

POEM = "I'm feeling a bit down. Can you share a poem to cheer me up?"  # row 0
COLOR = (  # row 1
    "Hi, I am designing a website and I need some inspiration. "
    "Can you suggest a random color for the background?"
)
NEWS = "What's the latest news?"  # row 8
COIN = "Hey, I'm having a hard time making a decision. Can you flip a coin for me?"  # row 20
DICE = "Can you roll a dice for me?"  # no-call row 46
TIP = "Hi, I need help with calculating a tip. My bill is $50 and I want to leave a 20% tip."  # 49


def flipped(result: dict, metric: str, direction: str) -> set[str]:
    return {f["question"] for f in result["metrics"][metric][direction]}


@pytest.fixture(scope="module")
def base_vs_v2() -> dict:
    return compare_records(SEED / "base.json", SEED / "lora-v2.json")


def test_base_vs_v2_matching(base_vs_v2: dict) -> None:
    # Same 40 call questions; v2 replaced the whole no-call set with the strict one.
    assert base_vs_v2["matched_by"] == "question"
    assert base_vs_v2["matched"] == {"call": 40, "nocall": 0}
    assert [u["kind"] for u in base_vs_v2["only_in_a"]] == ["nocall"] * 12
    assert [u["kind"] for u in base_vs_v2["only_in_b"]] == ["nocall"] * 12
    assert base_vs_v2["only_in_a"][0]["question"].startswith("I am looking for a good action")
    assert base_vs_v2["only_in_b"][0]["question"] == "Can you order pizza for me?"
    assert base_vs_v2["metrics"]["false_call_rate"]["n"] == 0


def test_base_vs_v2_flips(base_vs_v2: dict) -> None:
    metrics = base_vs_v2["metrics"]
    # The seed's 35.0% / 32.5% / 0% for base against 100% for v2.
    assert (metrics["parse_rate"]["pass_a"], metrics["parse_rate"]["pass_b"]) == (14, 40)
    assert (metrics["func_name_acc"]["pass_a"], metrics["func_name_acc"]["pass_b"]) == (13, 40)
    assert len(flipped(base_vs_v2, "args_exact_match", "fail_to_pass")) == 40
    for metric in ("parse_rate", "func_name_acc", "args_exact_match"):
        assert metrics[metric]["pass_to_fail"] == []
    # Row 1: base wrote Python; its only braces are "{:06x}", which is not JSON.
    assert COLOR in flipped(base_vs_v2, "parse_rate", "fail_to_pass")
    # Rows 0 and 8: base echoed the gold tool's schema, so the seed rule already counted
    # parse and name; only args-exact flips.
    for question in (POEM, NEWS):
        assert question in flipped(base_vs_v2, "args_exact_match", "fail_to_pass")
        assert question not in flipped(base_vs_v2, "parse_rate", "fail_to_pass")
        assert question not in flipped(base_vs_v2, "func_name_acc", "fail_to_pass")


def test_base_vs_v2_strict_counts_echoes_as_failures() -> None:
    result = compare_records(SEED / "base.json", SEED / "lora-v2.json", mode="strict")
    assert result["metrics"]["func_name_acc"]["pass_a"] == 0
    for question in (POEM, NEWS):
        assert question in flipped(result, "parse_rate", "fail_to_pass")


def test_v1_scaling_flips_calls_to_prose() -> None:
    # Section 6 of the study: "flip a coin" went from a correct call to polite prose.
    result = compare_records(SEED / "lora-400.json", SEED / "lora-ckpt-step800.json")
    assert result["matched"] == {"call": 40, "nocall": 12}
    assert result["only_in_a"] == [] and result["only_in_b"] == []
    assert COIN in flipped(result, "args_exact_match", "pass_to_fail")
    # No-call pass = no false call. 400 called roll_dice, step 800 asked how many dice;
    # 400 answered in prose on the tip question, step 800 called calculate_tip.
    assert DICE in flipped(result, "false_call_rate", "fail_to_pass")
    assert flipped(result, "false_call_rate", "pass_to_fail") == {TIP}
    # Row 42: step 800 did call analyze_customer_churn, but the call was cut at the token limit
    # (its last "}" closes an inner object), so the seed rule sees no call at all.
    churn = (
        "I need to analyze the customer churn for the last quarter. I have the customer data ready."
    )
    assert churn in flipped(result, "false_call_rate", "fail_to_pass")
    assert len(flipped(result, "false_call_rate", "fail_to_pass")) == 4  # rows 42, 43, 45, 46


def test_leaked_eval_is_matched_by_position() -> None:
    result = compare_records(SEED / "leaked-eval" / "base.json", SEED / "leaked-eval" / "lora.json")
    assert result["matched_by"] == "position"
    assert result["matched"] == {"call": 40, "nocall": 12}
    # leaked summaries: base 15/40 parse, lora 39/40.
    assert result["metrics"]["parse_rate"]["pass_a"] == 15
    assert result["metrics"]["parse_rate"]["pass_b"] == 39


def test_duplicate_question_is_an_error() -> None:
    row = {"kind": "nocall", "question": "Hi", "gold": "Hello", "pred": "Hello"}
    with pytest.raises(ValueError, match="row 1 repeats the nocall question of row 0"):
        compare_rows([row, row], [row])


def test_text_view_and_json(base_vs_v2: dict, capsys: pytest.CaptureFixture[str]) -> None:
    text = format_comparison(base_vs_v2)
    assert "matched by question: 40 call + 0 no-call questions" in text
    assert "only in A: 12 nocall (not compared)" in text
    assert "args_exact_match fail -> pass (40):" in text
    # Per-question grid: base row 0 parsed with the right name (echo), v2 passes all three.
    poem_line = next(line for line in text.splitlines() if POEM in line and line.startswith("call"))
    assert poem_line.split()[:3] == ["call", "PF.", "PFA"]
    print_comparison(base_vs_v2, as_json=True)
    assert json.loads(capsys.readouterr().out)["matched"] == {"call": 40, "nocall": 0}
