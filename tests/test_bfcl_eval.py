"""The BFCL suite end to end on the tiny model: `mlx-plamo eval --suite bfcl` writes records
that carry what BFCL's checker needs, `score` recomputes every verdict from the predictions
alone (so a hand-edited file rescores as it stands), `--compare` reads them, the training
overlap is measured, and batched generation predicts exactly what one question at a time does."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from commands.main import main as cli_main
from data.call_format import call_text
from data.prompt import example_row, render_tools
from eval.bfcl import CATEGORIES, case_row, load_cases
from eval.harness import run_eval
from mlx_plamo3.loading import load

ROW_FIELDS = {"suite", "category", "id", "question", "tools", "gold", "ground_truth", "functions"}


def run(args: list[str]):
    return CliRunner().invoke(cli_main, [str(a) for a in args])


def training_set_with_a_bfcl_tool(directory: Path) -> Path:
    """A built-dataset folder whose one training row offers BFCL's first simple_python tool."""
    parameters = {"type": "object", "properties": {"base": {"type": "integer"}}}
    tool = {"name": "calculate_triangle_area", "description": "Area", "parameters": parameters}
    reply = call_text(tool["name"], {"base": 3})
    row = example_row(
        render_tools([tool]), "Area of a triangle with base 3?", reply, "call", [tool]
    )
    directory.mkdir(parents=True)
    (directory / "train.jsonl").write_text(json.dumps(row) + "\n")
    (directory / "eval.jsonl").write_text(json.dumps(row) + "\n")
    return directory


def test_the_suite_end_to_end(tiny_mlx_dir, tmp_path):
    data = training_set_with_a_bfcl_tool(tmp_path / "data")
    out = tmp_path / "bfcl-base.json"
    common = ["--suite", "bfcl", "--per-category", "2", "--max-new-tokens", "8"]
    args = ["eval", "--condition", "base", "--model", tiny_mlx_dir, "--data", data, *common]
    result = run([*args, "--out", out])
    assert result.exit_code == 0, result.output
    assert "BFCL category" in result.output
    records = json.loads(out.read_text())
    rows = records["rows"]
    assert [r["category"] for r in rows] == [c for c in CATEGORIES for _ in range(2)]
    assert all(ROW_FIELDS <= row.keys() and row["suite"] == "bfcl" for row in rows)
    assert all(isinstance(row["pred_ids"], list) for row in rows)
    assert list(records["summary"]["bfcl"]["categories"]) == list(CATEGORIES)
    seen = records["summary"]["bfcl_seen_in_training"]
    assert json.dumps(seen).count("calculate_triangle_area") >= 1

    # Rescored from the predictions alone: every row's id, verdict, fair verdict, first failure.
    scored = json.loads(run(["score", out, "--json"]).output)
    verdicts = scored["bfcl"]["verdicts"]
    assert [v["id"] for v in verdicts] == [r["id"] for r in rows]
    assert all({"correct", "fair", "failed_check"} <= v.keys() for v in verdicts)

    # A hand edit: the first question answered with its gold call is now right, by BFCL's rules.
    edited = tmp_path / "edited.json"
    rows[0]["pred"] = rows[0]["gold"]
    edited.write_text(json.dumps(records))
    again = json.loads(run(["score", edited, "--json"]).output)["bfcl"]["verdicts"]
    assert again[0]["correct"] and again[0]["fair"] and again[0]["failed_check"] is None
    compared = run(["eval", "--compare", out, edited])
    assert compared.exit_code == 0, compared.output


def test_batched_generation_predicts_what_one_question_at_a_time_does(tiny_mlx_dir):
    rows = [case_row(case) for case in load_cases(limit_per_category=2)]
    model, tokenizer = load(tiny_mlx_dir)
    batched = run_eval(model, tokenizer, rows, "b", batch_size=8, max_new_tokens=12)
    single = run_eval(
        model, tokenizer, rows, "s", batch_size=1, share_prefix=False, max_new_tokens=12
    )
    assert [r["pred"] for r in batched["rows"]] == [r["pred"] for r in single["rows"]]
    assert [r["pred_ids"] for r in batched["rows"]] == [r["pred_ids"] for r in single["rows"]]
