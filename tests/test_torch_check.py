"""`mlx-plamo check-torch`: MLX eval records vs PyTorch + PEFT greedy outputs on the 52 frozen
eval prompts (tiny model, random non-zero LoRA), disagreement reports, and refusals of adapters
for another rank, target set or base, and of records without token ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters.check_inputs import (
    CheckError,
    match_eval_rows,
    recorded_max_new_tokens,
    token_ids_of,
)
from adapters.cli import check_torch_command
from adapters.divergence import first_difference_ids, strip_stop
from adapters.export import export_peft
from convert.tiny import write_tiny_checkpoint
from data.build import BuildConfig, build_dataset
from eval.harness import run_eval
from eval.records import write_records
from mlx_plamo3.peft import PEFT_CONFIG

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
from lora_helpers import make_random_adapter  # noqa: E402

SAMPLE = Path(__file__).parents[1] / "data/samples/llamafactory_glaive_toolcall_en_demo.json"
# Enough to reach past the tiny model's 16-token window and to let outputs drift apart if the
# two implementations differed; the real eval's 160 only costs more time.
MAX_NEW_TOKENS = 20


def make_adapter(model_dir: Path, out: Path, r: int = 4, targets: list[str] | None = None):
    return make_random_adapter(model_dir, out, r=r, targets=targets, seed=7)


@pytest.fixture(scope="module")
def setup(tiny_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The v2 dataset built offline (its 52 frozen eval questions), an MLX adapter, its MLX
    eval records and its PEFT export."""
    root = tmp_path_factory.mktemp("check")
    data_dir, _ = build_dataset(
        BuildConfig(recipe="v2", sources=(str(SAMPLE),), out=root / "data", progress=False)
    )
    from data import load_rows

    rows = load_rows(data_dir / "eval.jsonl")
    assert len(rows) == 52
    mlx_adapter = root / "mlx-adapter"
    model, tokenizer = make_adapter(tiny_hf_dir, mlx_adapter)
    records = run_eval(model, tokenizer, rows, "lora", max_new_tokens=MAX_NEW_TOKENS)
    records["summary"]["adapter"] = str(mlx_adapter)
    results = root / "results" / "lora.json"
    results.parent.mkdir()
    write_records(results, records["summary"], records["rows"])
    peft_dir = export_peft(mlx_adapter, root / "peft")
    return {"data": data_dir, "mlx_adapter": mlx_adapter, "results": results, "peft": peft_dir}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny models: thread hand-offs cost more than the math (10x on a busy 2-core machine).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def check(setup: dict[str, Path], base: Path, *extra: str, results: Path | None = None):
    args = [
        "--base",
        str(base),
        "--adapter",
        str(setup["peft"]),
        "--results",
        str(results or setup["results"]),
        "--data",
        str(setup["data"]),
        "--quiet",
        *extra,
    ]
    return CliRunner().invoke(check_torch_command, args)


# ---- the comparison, end to end -------------------------------------------------------------


def test_check_torch_agrees_on_all_52_questions(setup, tiny_hf_dir, tmp_path, monkeypatch):
    # Without --trust-remote-code the checkpoint's own code must never be loaded.
    import transformers

    def refuse(*_, **__):
        raise AssertionError("AutoModelForCausalLM used without --trust-remote-code")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    out = tmp_path / "report.json"
    result = check(setup, tiny_hf_dir, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "agreement: 52/52 questions identical" in result.output
    report = json.loads(out.read_text())
    assert (report["n"], report["agree"], report["passed"]) == (52, 52, True)
    assert report["max_new_tokens"] == MAX_NEW_TOKENS  # taken from the records' summary
    assert report["mlx_adapter_checked"] == str(setup["mlx_adapter"])
    assert report["model_code"] == "reference"
    for mode in ("study", "strict"):
        metrics = report["metrics"][mode]
        assert metrics["mlx"]["counts"] == metrics["torch"]["counts"]
    # The outputs are real generations, not empty strings that would agree trivially.
    lengths = [len(row["torch_ids"]) for row in report["rows"]]
    assert sum(lengths) > 52 * MAX_NEW_TOKENS // 2
    assert all(row["mlx_pred"] == row["torch_pred"] for row in report["rows"])


def test_a_changed_prediction_is_reported_with_its_token_and_margin(setup, tiny_hf_dir, tmp_path):
    data = json.loads(setup["results"].read_text())
    data["rows"] = data["rows"][:4]  # a subset of the questions keeps this test quick
    ids = data["rows"][3]["pred_ids"]
    assert len(ids) > 4
    vocab = json.loads((tiny_hf_dir / "config.json").read_text())["vocab_size"]
    changed = (ids[4] + 1) % vocab
    ids[4] = changed
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    result = check(setup, tiny_hf_dir, results=tampered)
    assert result.exit_code == 1, result.output
    assert "agreement: 3/4 questions identical (compared by token ids" in result.output
    report = json.loads((tmp_path / "tampered.torch-check.json").read_text())
    assert (report["compared_by"], report["agree"]) == ("token ids", 3)
    row = report["rows"][3]
    assert row["agree"] is False and row["torch_pred"] == row["mlx_pred"]
    assert row["torch_ids"][:4] == ids[:4] and row["torch_ids"][4] != changed
    divergence = row["divergence"]
    assert (divergence["index"], divergence["mlx_token_source"]) == (4, "ids")
    assert (divergence["torch_token"], divergence["mlx_token"]) == (row["torch_ids"][4], changed)
    assert divergence["top1_top2_margin"] >= 0
    assert divergence["torch_minus_mlx_logit"] > 0  # PyTorch's greedy pick scores highest
    assert "#3 [" in result.output and "token 4: torch " in result.output
    assert f"({changed}, from ids); logit(torch) - logit(mlx) = " in result.output
    # The threshold is the user's: 3 required passes.
    assert check(setup, tiny_hf_dir, "--min-agreement", "3", results=tampered).exit_code == 0


# ---- refusals ---------------------------------------------------------------------------------


def test_an_adapter_for_another_base_is_refused(setup, tmp_path):
    other = write_tiny_checkpoint(tmp_path / "other", hidden_size=32)
    result = check(setup, other)
    assert result.exit_code != 0
    assert "does not fit the base model" in result.output
    assert "shape mismatch" in result.output and "base fingerprint" in result.output


def test_an_adapter_of_another_rank_is_refused(setup, tiny_hf_dir, tmp_path):
    make_adapter(tiny_hf_dir, tmp_path / "r8", r=8)
    result = check(setup, tiny_hf_dir, "--mlx-adapter", str(tmp_path / "r8"))
    assert result.exit_code != 0
    assert "rank r: PEFT 4, MLX 8" in result.output


def test_an_adapter_for_another_target_set_is_refused(setup, tiny_hf_dir, tmp_path):
    make_adapter(tiny_hf_dir, tmp_path / "qkv", targets=["qkv_proj"])
    result = check(setup, tiny_hf_dir, "--mlx-adapter", str(tmp_path / "qkv"))
    assert result.exit_code != 0
    assert "target_modules: PEFT ['down_proj', 'gate_up_proj', 'o_proj', 'qkv_proj']" in (
        result.output
    )


def test_a_peft_config_that_lies_about_its_rank_is_refused(setup, tiny_hf_dir, tmp_path):
    lying = shutil.copytree(setup["peft"], tmp_path / "peft")
    config = json.loads((lying / PEFT_CONFIG).read_text())
    (lying / PEFT_CONFIG).write_text(json.dumps({**config, "r": 16}))
    result = CliRunner().invoke(
        check_torch_command,
        [
            *("--base", str(tiny_hf_dir), "--adapter", str(lying)),
            *("--results", str(setup["results"]), "--data", str(setup["data"]), "--quiet"),
        ],
    )
    assert result.exit_code != 0
    assert "rank mismatch" in result.output and "config r=16" in result.output


def test_records_from_another_eval_are_refused(setup, tiny_hf_dir, tmp_path):
    data = json.loads(setup["results"].read_text())
    data["rows"][0]["question"] = "A question this eval never asked?"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    result = check(setup, tiny_hf_dir, results=other)
    assert result.exit_code != 0
    assert "1 record question(s) are not in" in result.output
    assert "A question this eval never asked?" in result.output


def test_records_without_token_ids_are_refused(setup, tiny_hf_dir, tmp_path):
    data = json.loads(setup["results"].read_text())
    del data["rows"][1]["pred_ids"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    result = check(setup, tiny_hf_dir, results=old)
    assert result.exit_code != 0
    assert f"{old}: row(s) 1: records without token ids ('pred_ids')" in result.output
    assert "rerun `mlx-plamo eval`" in result.output


# ---- the pure pieces ------------------------------------------------------------------------


def test_first_difference_of_token_ids():
    assert first_difference_ids([1, 2, 3], [1, 2, 3]) is None
    assert first_difference_ids([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference_ids([1, 2], [1, 2, 3]) == 2


def test_strip_stop_and_decoding_budget():
    assert strip_stop([5, 6, 2], {2, 16}) == [5, 6]
    assert strip_stop([5, 6], {2}) == [5, 6]
    assert recorded_max_new_tokens({"decoding": {"max_new_tokens": 64}}) == 64
    assert recorded_max_new_tokens({}) == 160


def test_token_ids_of_the_records():
    records = [{"pred_ids": [5, 6]}, {"pred_ids": []}]
    assert token_ids_of(records, Path("r.json")) == [[5, 6], []]
    bad = [{"pred_ids": [5]}, {"pred": "x"}, {"pred_ids": "5 6"}, {"pred_ids": [5.0]}]
    with pytest.raises(CheckError, match=r"r\.json: row\(s\) 1, 2, 3: records without token"):
        token_ids_of(bad, Path("r.json"))


def test_matching_names_missing_questions():
    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}]}
    assert match_eval_rows([{"question": "q1"}], [row], "eval.jsonl") == [row]
    with pytest.raises(CheckError, match="'q2'"):
        match_eval_rows([{"question": "q2"}], [row], "eval.jsonl")
    with pytest.raises(CheckError, match="no 'question'"):
        match_eval_rows([{"kind": "call"}], [row], "eval.jsonl")


def test_hf_generate_path_matches_the_reference_greedy_loop(setup, tiny_hf_dir):
    # --trust-remote-code decodes with transformers' generate(); on the reference model both
    # decoders must give the same tokens, stop token included.
    from peft import PeftModel

    from adapters.torch_side import greedy_tokens
    from mlx_plamo3.torch_reference import load_reference

    model = PeftModel.from_pretrained(load_reference(tiny_hf_dir), str(setup["peft"])).eval()
    prompt = list(range(5, 45))
    stops = {2, 16}
    ours = greedy_tokens(model, prompt, 12, stops, hf_generate=False)
    theirs = greedy_tokens(model, prompt, 12, stops, hf_generate=True)
    assert len(ours) >= 1 and ours == theirs
