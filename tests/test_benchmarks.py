"""The benchmarks: their shape arithmetic against the real model, their memory measurement, and
each script run end to end at the small shape (the code path the real-shape runs take)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from benchmarks import common
from mlx_plamo3.lora import LoraConfig, apply_lora
from mlx_plamo3.model import Model, ModelArgs

REPORT_KEYS = {"benchmark", "command", "machine", "settings", "results", "notes", "wall_seconds"}


def read_report(path: Path, name: str) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    assert REPORT_KEYS <= set(doc), sorted(REPORT_KEYS - set(doc))
    assert doc["benchmark"] == name
    assert doc["machine"]["mlx_device"] == str(mx.default_device())
    return doc


# ---- shape arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(common.SHAPES))
def test_param_counts_equal_the_models_own_parameters(shape: str) -> None:
    # Parameters stay lazy, so the full 2.6B shape costs no memory here.
    config = common.real_config(shape=shape)
    model = Model(ModelArgs.from_dict(config))
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert common.param_count(config)["total"] == total
    apply_lora(model, LoraConfig(r=16))
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    assert common.lora_param_count(config, r=16) == trainable


def test_real_shape_is_the_published_size() -> None:
    assert 2.55e9 < common.param_count(common.real_config())["total"] < 2.7e9


def test_real_shape_fills_the_checkpoints_shards() -> None:
    # Each shard of the real checkpoint is whole bf16 tensors plus a JSON header of a few KiB;
    # the benchmark's random checkpoint must shard the same tensors the same way.
    from benchmarks.bench_convert import hf_tensor_shapes, shard_layout

    config = common.real_config()
    tensors = hf_tensor_shapes(config)
    assert not any(key == "lm_head.weight" for key, _ in tensors)  # tied
    shards = shard_layout(tensors)
    data_bytes = [sum(2 * math.prod(shape) for _, shape in shard) for shard in shards]
    real_bytes = common.REAL_2B_SHARD_BYTES
    headers = [real - data for real, data in zip(real_bytes, data_bytes, strict=True)]
    assert all(0 < header < 16 * 1024 for header in headers), headers
    assert sum(data_bytes) == 2 * common.param_count(config)["total"]


@pytest.mark.parametrize("shape", sorted(common.SHAPES))
def test_random_checkpoint_layout_equals_the_model_keys(shape: str) -> None:
    from benchmarks.bench_convert import hf_tensor_shapes

    config = common.real_config(shape=shape)
    model = Model(ModelArgs.from_dict(config))
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    assert dict(hf_tensor_shapes(config)) == expected


def test_real_config_rejects_an_unknown_shape() -> None:
    with pytest.raises(ValueError, match="unknown shape 'huge'"):
        common.real_config(shape="huge")


# ---- measurement helpers -----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="the inherited-maxrss trap is Linux's")
def test_child_peak_rss_is_the_childs_own_not_the_parents() -> None:
    # wait4's maxrss on Linux carries the parent's peak across fork+exec; the benchmark must
    # report what the child itself held. (VmHWM is polled, so the child outlives its peak by
    # more than one poll, as every benchmark child does.)
    parent_ballast = bytearray(600 * 2**20)
    parent_ballast[::4096] = b"x" * len(parent_ballast[::4096])
    allocate = "b = bytearray(200 * 2**20); b[::4096] = b'y' * len(b[::4096]); del b"
    child = common.run_child([sys.executable, "-c", f"import time; {allocate}; time.sleep(0.5)"])
    assert child.returncode == 0, child.output
    assert 200 * 2**20 <= child.peak_rss_bytes < 400 * 2**20
    del parent_ballast


def test_run_child_reports_failure_output_and_timeout() -> None:
    failed = common.run_child([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    assert failed.returncode == 3 and "boom" in failed.output
    slow = common.run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert slow.returncode != 0 and slow.seconds < 20


@pytest.mark.parametrize(("platform", "expected"), [("linux", 5 * 1024), ("darwin", 5)])
def test_maxrss_units_follow_the_platform(
    monkeypatch: pytest.MonkeyPatch, platform: str, expected: int
) -> None:
    monkeypatch.setattr(common.sys, "platform", platform)
    assert common._maxrss_bytes(5) == expected


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_torch_device_prefers_cuda_then_mps(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert common.torch_device() == expected


def test_table_is_markdown_with_aligned_columns(capsys: pytest.CaptureFixture[str]) -> None:
    text = common.print_table(["name", "n"], [["a", 1234567], ["bb", 0.5]], title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and lines[2].startswith("| name")
    assert "1,234,567" in text and "0.50" in text
    assert len({len(line) for line in lines[2:]}) == 1
    assert capsys.readouterr().out.strip() == text


# ---- every benchmark, end to end at the small shape --------------------------------------------


def test_bench_convert_small(tmp_path: Path) -> None:
    from benchmarks import bench_convert

    out = tmp_path / "convert.json"
    argv = ["--shape", "small", "--repeats", "1", "--out", str(out)]
    assert bench_convert.main([*argv, "--work-dir", str(tmp_path / "work")]) == 0
    doc = read_report(out, "bench_convert")
    results = doc["results"]
    assert results["comparison"]["identical"], results["comparison"]
    assert results["comparison"]["tensors_compared"] == len(
        bench_convert.hf_tensor_shapes(doc["settings"]["config"])
    )
    for converter in ("python -m convert", "mlx_lm.convert"):
        entry = results["converters"][converter]
        assert entry["seconds"]["median"] > 0 and entry["peak_rss_bytes"]["median"] > 0


def test_bench_train_small(tmp_path: Path) -> None:
    from benchmarks import bench_train

    out = tmp_path / "train.json"
    argv = ["--shape", "small", "--depths", "1,2", "--check-depth", "3", "--dtype", "float32"]
    argv += ["--examples-per-step", "2", "--steps", "1", "--repeats", "2", "--out", str(out)]
    assert bench_train.main(argv) == 0
    doc = read_report(out, "bench_train")
    by_depth = doc["results"]["by_depth"]
    assert set(by_depth) == {"1", "2"}
    for results in by_depth.values():
        assert set(results) == set(bench_train.COMPETITORS)
        for name, result in results.items():
            assert "error" not in result, (name, result.get("output"))
            timed = result["timed"]
            assert timed["runs"] == 2 and len(result["runs"]) == 2, name
            assert timed["steps"] == 1 and timed["tokens_per_second"] > 0, name
            per_run = sorted(run["timed"]["tokens_per_second"] for run in result["runs"])
            assert per_run[0] <= timed["tokens_per_second"] <= per_run[1], name
            for run in result["runs"]:
                assert all(step["loss"] == step["loss"] for step in run["steps"]), name  # no NaN
        # Ours and the seed's loop count the same tokens of the same examples.
        for key in ("tokens", "supervised"):
            assert results["ours"]["timed"][key] == results["torch"]["timed"][key]
    # Two depths: the fit goes through both points and predicts the shape's full depth.
    full = doc["settings"]["full_depth"]
    assert full == bench_train.real_config(None, "small")["num_hidden_layers"]
    for name, fit in doc["results"]["fits"].items():
        one, two = (by_depth[d][name]["timed"]["seconds_per_step"] for d in ("1", "2"))
        assert fit["seconds_per_layer"] == pytest.approx(two - one), name
        expected = one + (full - 1) * (two - one)
        assert fit["predicted_seconds_per_step"] == pytest.approx(expected), name
    # Memory is fitted too where it is measured (MLX's allocator; torch on a CPU has none).
    fits = doc["results"]["fits"]
    assert fits["ours"]["predicted_peak_bytes"] > 0 and fits["mlx_lm"]["predicted_peak_bytes"] > 0
    if doc["settings"]["torch_device"] == "cpu":
        assert fits["torch"]["predicted_peak_bytes"] is None
    assert bench_train.main(["--reprint", str(out)]) == 0
    check = doc["results"]["check"]
    assert check["timed"]["steps"] == 1 and check["timed"]["tokens_per_second"] > 0
    # The plan decided ours' settings, and the workers used them.
    plan = doc["settings"]["plan"]
    run = by_depth["1"]["ours"]["runs"][0]
    assert run["settings"]["max_batch_tokens"] == plan["max_batch_tokens"]
    assert run["settings"]["packing"] == plan["packing"]
    assert by_depth["1"]["ours-nopack"]["runs"][0]["settings"]["packing"] is False


def test_profile_train_step_small(tmp_path: Path) -> None:
    from benchmarks import profile_train_step

    out = tmp_path / "profile.json"
    argv = ["--shape", "small", "--layers", "2", "--repeats", "1", "--out", str(out)]
    assert profile_train_step.main(argv) == 0
    results = read_report(out, "profile_train_step")["results"]
    costs = results["costs"]
    parts = ("base matmuls", "LoRA branches", "attention core", "MLP activation")
    assert all(costs[name] > 0 for name in (*parts, "layer", "output head"))
    assert costs["rest of the layer"] == pytest.approx(
        costs["layer"] - sum(costs[name] for name in parts)
    )
    assert results["step_seconds"] > 0 and results["pass_shapes"]


def test_depth_fit_is_least_squares() -> None:
    from benchmarks.common import fit_over_depth

    fixed, per_layer = fit_over_depth({1: 7.0, 2: 9.0, 4: 13.0})  # on the line 5 + 2 x layers
    assert (fixed, per_layer) == pytest.approx((5.0, 2.0))
    # Off the line: the least-squares slope of (1, 1), (2, 3), (3, 2) is 0.5, intercept 1.
    assert fit_over_depth({1: 1.0, 2: 3.0, 3: 2.0}) == pytest.approx((1.0, 0.5))
    with pytest.raises(ValueError):
        fit_over_depth({4: 1.0})


def test_bench_memory_small(tmp_path: Path) -> None:
    from benchmarks import bench_memory

    out = tmp_path / "memory.json"
    argv = ["--shape", "small", "--layers", "2", "--seq-len", "96", "--steps", "2"]
    assert bench_memory.main([*argv, "--out", str(out)]) == 0
    cases = {c["base"]: c for c in read_report(out, "bench_memory")["results"]["cases"]}
    assert set(cases) == {"bf16", "4bit"}
    for case in cases.values():
        assert case["peak_bytes"] > case["weights_bytes"] > 0
        assert case["seq_len"] == 96 and len(case["step_seconds"]) == 2
    assert cases["4bit"]["weights_bytes"] < cases["bf16"]["weights_bytes"] / 2


def test_bench_memory_default_step_runs_the_planned_largest_pass(tmp_path: Path) -> None:
    from benchmarks import bench_memory
    from benchmarks.common import real_config

    # At the real shape, planned for 24 layers (no weights are built for this): BENCHMARKS.md's
    # table of the default command, a 24 GB Mac at --memory-limit 17.
    config = real_config(2)
    batch, shape, checkpointed = bench_memory.default_step_pass(config, "bf16", 17.0, 24)
    assert shape.slots <= 1536 and not checkpointed
    assert batch.inputs.shape == (shape.rows, shape.width) and batch.n_supervised > 0
    _, shape, _ = bench_memory.default_step_pass(config, "4bit", 17.0, 24)
    assert shape.slots <= 2048
    _, shape, checkpointed = bench_memory.default_step_pass(config, "bf16", 8.0, 24)
    assert checkpointed  # one 768-token example alone needs ~10 GiB without it

    out = tmp_path / "memory.json"
    argv = ["--shape", "small", "--bases", "bf16", "--layers", "2", "--default-step", "0.5"]
    assert bench_memory.main([*argv, "--steps", "1", "--out", str(out)]) == 0
    (case,) = read_report(out, "bench_memory")["results"]["cases"]
    assert case["default_step_budget_gib"] == 0.5
    assert case["pass_tokens"] <= case["pass_rows"] * case["row_width"]
    assert case["peak_bytes"] > case["weights_bytes"] > 0


def test_bench_memory_plan_and_bench_plan_run(tmp_path: Path) -> None:
    from benchmarks import bench_memory_plan, bench_plan

    out = tmp_path / "memory_plan.json"
    assert bench_memory_plan.main(["--cases", "quick", "--out", str(out)]) == 0
    (case,) = read_report(out, "bench_memory_plan")["results"]["cases"]
    assert case["peak_bytes"] > 0 and case["predicted_bytes"] > 0
    out = tmp_path / "plan.json"
    assert bench_plan.main(["--steps", "3", "--out", str(out)]) == 0
    plans = read_report(out, "bench_plan")["results"]["plans"]
    assert {p["base"] for p in plans} == {"bf16", "4bit"} and all(p["fits"] for p in plans)


def test_bench_decode_small_agrees_with_mlx_lm(tmp_path: Path) -> None:
    from benchmarks import bench_decode

    out = tmp_path / "decode.json"
    argv = ["--models", "real", "--shape", "small", "--dtype", "float32", "--batch-sizes", "1,3"]
    argv += ["--prompt-len", "8", "--new-tokens", "5", "--repeats", "1", "--out", str(out)]
    assert bench_decode.main(argv) == 0
    runs = read_report(out, "bench_decode")["results"]["runs"]
    assert {(r["implementation"], r["batch"]) for r in runs} == {
        (impl, batch) for impl in ("ours", "mlx_lm") for batch in (1, 3)
    }
    # Inside the sliding window both implementations must decode the same greedy tokens.
    assert all(r["same_tokens_as_mlx_lm"] for r in runs)


def test_bench_eval_small(tmp_path: Path) -> None:
    from benchmarks import bench_eval

    out = tmp_path / "eval.json"
    argv = ["--repeats", "1", "--max-new-tokens", "6", "--out", str(out)]
    assert bench_eval.main(argv) == 0
    results = read_report(out, "bench_eval")["results"]
    assert results["predictions_identical"]
    assert set(results["modes"]) == {
        "batched + prefix reuse",
        "sequential, no reuse",
        "batched, no reuse",
    }


def test_bench_eval_at_the_user_width_fits_over_depth(tmp_path: Path) -> None:
    from benchmarks import bench_eval

    out = tmp_path / "eval_width.json"
    argv = ["--suite", "bfcl", "--per-category", "1", "--layers", "1,2", "--shape", "small"]
    argv += ["--max-new-tokens", "4", "--repeats", "1", "--out", str(out)]
    assert bench_eval.main(argv) == 0
    results = read_report(out, "bench_eval")["results"]
    assert results["predictions_identical"]
    assert set(results["depths"]) == {"1", "2"}
    assert results["fit"]["depth"] == 24 and results["fit"]["batched_seconds_per_question"] > 0
    assert results["sequential_questions"] == list(range(7))  # one question per category


def test_bench_eval_at_the_user_width_times_one_at_a_time_on_a_sample(tmp_path: Path) -> None:
    from benchmarks import bench_eval

    out = tmp_path / "eval_sample.json"
    argv = ["--suite", "bfcl", "--per-category", "2", "--layers", "1", "--shape", "small"]
    argv += ["--max-new-tokens", "3", "--repeats", "1", "--sequential-sample", "3"]
    assert bench_eval.main([*argv, "--out", str(out)]) == 0
    results = read_report(out, "bench_eval")["results"]
    # 14 questions in category order; the 3 one-at-a-time ones come from across the set.
    assert results["sequential_questions"] == [2, 7, 11]
    assert results["predictions_identical"]
    with pytest.raises(SystemExit):
        bench_eval.main([*argv[:-1], "0"])


def test_bench_export_small(tmp_path: Path) -> None:
    from benchmarks import bench_export

    out = tmp_path / "export.json"
    assert bench_export.main(["--shape", "small", "--repeats", "1", "--out", str(out)]) == 0
    doc = read_report(out, "bench_export")
    params = doc["settings"]["params"]
    assert params == common.lora_param_count(doc["settings"]["config"], r=16)
    assert doc["results"]["float32"]["file_bytes"] > 4 * params
    assert doc["results"]["bfloat16"]["file_bytes"] > 2 * params


def test_bench_tokenizer_small(tmp_path: Path) -> None:
    from benchmarks import bench_tokenizer

    out = tmp_path / "tokenizer.json"
    argv = ["--examples", "20", "--synthetic-size", "0", "--out", str(out)]
    assert bench_tokenizer.main(argv) == 0
    rows = read_report(out, "bench_tokenizer")["results"]["rows"]
    assert {r["workload"] for r in rows} == {"encode/cold", "encode/warm", "mask"}
    assert all(r["tokens"] > 0 for r in rows)


def test_bench_data_small(tmp_path: Path) -> None:
    from benchmarks import bench_data

    out = tmp_path / "data.json"
    argv = ["--rows", "400", "--repeats", "2", "--work-dir", str(tmp_path / "work")]
    assert bench_data.main([*argv, "--out", str(out)]) == 0
    variants = read_report(out, "bench_data")["results"]["variants"]
    assert set(variants) == {"repeat", "distinct"}
    for variant in variants.values():
        assert variant["v2_build"]["rows"] == 400
        assert len(variant["v2_build"]["runs"]) == 2 and len(variant["parse"]["runs"]) == 2
        assert variant["v2_build"]["peak_rss_mib"] > 0
    assert (tmp_path / "work" / "distinct.json").is_file()  # --work-dir is kept


def test_memory_fit_predicts_the_full_depth_from_shallow_cases(tmp_path: Path) -> None:
    from benchmarks import bench_memory

    def case(base: str, layers: int, peak: float) -> dict[str, Any]:
        return {
            "base": base,
            "seq_len": 768,
            "layers": layers,
            "peak_bytes": peak,
            "step_seconds": [1.0],
        }

    # bf16: 0.5 GiB fixed + 0.25 GiB per layer, plus a measured 24-layer case 1% off the line.
    gib = 2**30
    cases = [case("bf16", n, (0.5 + 0.25 * n) * gib) for n in (1, 2, 4)]
    cases += [case("bf16", 24, 6.5 * gib * 1.01), case("4bit", 1, gib), case("4bit", 2, 1.5 * gib)]
    cases.append(case("4bit", 1, 9 * gib) | {"seq_len": 32})  # one depth only: no fit
    fits = {f["base"]: f for f in bench_memory.fit_layers(cases, depth=24)}
    assert set(fits) == {"bf16", "4bit"}
    assert fits["bf16"]["per_layer_bytes"] == pytest.approx(0.25 * gib)
    assert fits["bf16"]["predicted_peak_bytes"] == pytest.approx(6.5 * gib)
    assert fits["bf16"]["measured_peak_bytes"] == pytest.approx(6.5 * gib * 1.01)
    assert fits["4bit"]["predicted_peak_bytes"] == pytest.approx(12.5 * gib)
    assert fits["4bit"]["measured_peak_bytes"] is None

    # The default step's pass is fitted on its own, never mixed with --seq-len cases of the
    # same nominal length.
    pass_fields = {"default_step_budget_gib": 17.0, "pass_rows": 3, "row_width": 512}
    default = [
        case("bf16", n, (1.0 + 0.5 * n) * gib) | pass_fields | {"pass_tokens": 1446} for n in (1, 2)
    ]
    fits = bench_memory.fit_layers(cases + default, depth=24)
    by_pass = {(f["base"], f["pass"]): f for f in fits}
    assert by_pass[("bf16", "768 tokens")]["per_layer_bytes"] == pytest.approx(0.25 * gib)
    step = by_pass[("bf16", "default step at 17 GiB: 3 x 512 (1446 tokens)")]
    assert step["predicted_peak_bytes"] == pytest.approx(13.0 * gib)

    report = tmp_path / "a.json"
    report.write_text(json.dumps({"results": {"cases": cases}}))
    out = tmp_path / "fit.json"
    assert bench_memory.main(["--combine", str(report), "--out", str(out)]) == 0
    written = json.loads(out.read_text())["results"]["fits"]
    assert {f["base"] for f in written} == {"bf16", "4bit"}
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match=r"bad\.json: not a bench_memory report"):
        bench_memory.main(["--combine", str(bad)])


def test_bench_serve_small(tmp_path: Path) -> None:
    from benchmarks import bench_serve

    out = tmp_path / "serve.json"
    argv = ["--models", "real", "--shape", "small", "--dtype", "float32", "--clients", "1,3"]
    argv += ["--requests", "1", "--max-tokens", "4", "--out", str(out)]
    assert bench_serve.main([*argv, "--work-dir", str(tmp_path / "work")]) == 0
    runs = read_report(out, "bench_serve")["results"]["runs"]
    assert {(r["server"], r["clients"]) for r in runs} == {
        (server, clients) for server in bench_serve.SERVERS for clients in (1, 3)
    }
    for run in runs:
        assert run["requests"] == run["clients"] and not run["errors"], run
        assert run["requests_per_second"] > 0 and run["generated_tokens"] > 0
    # Greedy replies do not depend on how many requests decode together.
    assert all(r["same_replies_as_sequential"] for r in runs if r["server"] == "ours-batched")


def test_bench_constrain_small(tmp_path: Path) -> None:
    from benchmarks import bench_constrain

    out = tmp_path / "constrain.json"
    argv = ["--shape", "small", "--per-category", "1", "--repeats", "1", "--max-new-tokens", "6"]
    assert bench_constrain.main([*argv, "--out", str(out)]) == 0
    results = read_report(out, "bench_constrain")["results"]
    assert set(results["decoding"]) == {"unconstrained", "auto", "required"}
    assert results["decoding"]["unconstrained"]["grammar_us_per_row_step"] == 0
    assert all(r["row_steps"] >= r["generated_tokens"] > 0 for r in results["decoding"].values())
    mask = results["mask"]
    assert mask["vocab_size"] == common.real_config(shape="small")["vocab_size"]
    assert mask["tokens_timed"] > 0 and mask["gold_replies_replayed"] > 0
