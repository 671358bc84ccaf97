"""The training loop on the tiny checkpoint: learning, resume, checkpoints, guards, tracking."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

import train.checkpoints as checkpoints
from convert.convert import convert_checkpoint
from data import LeakageError
from mlx_plamo3.loading import load_model
from mlx_plamo3.lora import load_adapter, lora_parameters
from train.checkpoints import CheckpointError, latest_checkpoint, list_checkpoints
from train.cli import train_command
from train.config import TrainConfig
from train.trainer import NonFiniteLossError, StepStats, Trainer, TrainError, train

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Rome", "Delhi", "Seoul", "Bern"]
SYSTEM = 'Tools:\n{"name": "get_time"}'


def row(question: str, answer: str, kind: str) -> dict:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": messages, "kind": kind, "tools": [{"name": "get_time"}]}


def call(city: str) -> str:
    return json.dumps({"name": "get_time", "arguments": {"city": city}})


def write_dataset(directory: Path, n_train: int = 12, leak: bool = False) -> Path:
    train_rows = [
        row(f"What time is it in {CITIES[i % 10]}? ({i})", call(CITIES[i % 10]), "call")
        if i % 4
        else row(f"Tell me joke {i}.", "Why did the cat sit on the clock?" * (1 + i % 3), "nocall")
        for i in range(n_train)
    ]
    eval_rows = [
        {**row("What time is it in Accra?", call("Accra"), "call"), "gold": call("Accra")},
        {**row("Time in Doha, please?", call("Doha"), "call"), "gold": call("Doha")},
        {**row("Sing me a song.", "La la la.", "nocall"), "gold": "La la la."},
    ]
    if leak:
        eval_rows.append({**train_rows[1], "gold": "x"})
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train_rows), ("eval.jsonl", eval_rows)):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The rows are plain text; the recorded call format is only carried into the adapter.
    manifest = {"recipe": "test-recipe", "call_format": "plamo"}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "toy")


def config(model_dir: Path, data_dir: Path, adapter: Path, **overrides) -> TrainConfig:
    settings = {
        "data": str(data_dir),
        "model": str(model_dir),
        "adapter_path": str(adapter),
        "dtype": "float32",
        "lora_r": 4,
        "lora_alpha": 8.0,
        "lora_dropout": 0.1,
        "grad_accum": 4,
        "epochs": 2,
        "max_length": 160,
        "max_batch_tokens": 256,
        "pad_multiple": 32,
        "checkpoint_every": 2,
        "checkpoint_eval": False,
        "mlflow": False,
        "progress": False,
        "learning_rate": 2e-3,
        # Uncompiled by default: MLX's CPU backend builds C++ kernels for a compiled step on
        # first use (tens of seconds on a cold cache); one slow test covers the compiled path.
        "compile": False,
    }
    return TrainConfig(**{**settings, **overrides})


def adapter_arrays(directory: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(directory / "adapters.safetensors")).items()}


class Interrupt(Exception):
    pass


def stop_after(step: int):
    def on_step(stats: StepStats) -> None:
        if stats.step == step:
            raise Interrupt

    return on_step


@pytest.fixture(scope="module")
def uninterrupted(tiny_mlx_dir, dataset, tmp_path_factory):
    """A full run (6 steps: 12 examples x 2 epochs / 4), dropout on."""
    adapter = tmp_path_factory.mktemp("full") / "adapter"
    result = train(config(tiny_mlx_dir, dataset, adapter), log=lambda _: None)
    return result, adapter_arrays(adapter)


def test_loss_decreases(uninterrupted):
    result, _ = uninterrupted
    losses = [s.loss for s in result.history]
    assert len(losses) == result.total_steps == 6
    assert all(np.isfinite(losses))
    # The second epoch sees the same examples after learning from them.
    assert np.mean(losses[3:]) < np.mean(losses[:3]) - 0.1


def test_resume_equals_uninterrupted(tiny_mlx_dir, dataset, uninterrupted, tmp_path):
    full, full_weights = uninterrupted
    adapter = tmp_path / "adapter"
    with pytest.raises(Interrupt):
        train(config(tiny_mlx_dir, dataset, adapter), on_step=stop_after(3), log=lambda _: None)
    assert [s for s, _ in list_checkpoints(adapter)] == [2]  # step 3 ran but was not saved
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(config(tiny_mlx_dir, dataset, adapter), log=lambda _: None)

    resumed = train(config(tiny_mlx_dir, dataset, adapter, resume=True), log=lambda _: None)
    assert [s.step for s in resumed.history] == [3, 4, 5, 6]
    assert [s.loss for s in resumed.history] == [s.loss for s in full.history[2:]]
    assert [s.examples_seen for s in resumed.history] == [s.examples_seen for s in full.history[2:]]
    weights = adapter_arrays(adapter)
    assert weights.keys() == full_weights.keys()
    for name, value in full_weights.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)


@pytest.mark.slow
def test_compiled_interrupted_and_resumed_run_equals_the_reference(
    tiny_mlx_dir, dataset, uninterrupted, tmp_path
):
    # Compiled steps capture the optimizer state: a resume must restore it before compiling.
    full, full_weights = uninterrupted
    adapter = tmp_path / "adapter"
    compiled = {"compile": True}
    with pytest.raises(Interrupt):
        train(
            config(tiny_mlx_dir, dataset, adapter, **compiled),
            on_step=stop_after(3),
            log=lambda _: None,
        )
    resumed = train(
        config(tiny_mlx_dir, dataset, adapter, resume=True, **compiled), log=lambda _: None
    )
    np.testing.assert_allclose(
        [s.loss for s in resumed.history], [s.loss for s in full.history[2:]], rtol=1e-5
    )
    weights = adapter_arrays(adapter)
    for name, value in full_weights.items():
        np.testing.assert_allclose(weights[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_resume_refuses_other_settings(tiny_mlx_dir, dataset, tmp_path):
    adapter = tmp_path / "adapter"
    with pytest.raises(Interrupt):
        train(config(tiny_mlx_dir, dataset, adapter), on_step=stop_after(2), log=lambda _: None)
    with pytest.raises(TrainError, match="learning_rate"):
        Trainer(config(tiny_mlx_dir, dataset, adapter, resume=True, learning_rate=1e-3))


def test_resume_refuses_changed_checkpoint_eval_questions(tiny_mlx_dir, tmp_path):
    data = write_dataset(tmp_path / "data")
    adapter = tmp_path / "adapter"
    with pytest.raises(Interrupt):
        train(config(tiny_mlx_dir, data, adapter), on_step=stop_after(2), log=lambda _: None)
    eval_file = data / "eval.jsonl"
    eval_file.write_text("".join(eval_file.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(TrainError, match="eval_data_hash"):
        Trainer(config(tiny_mlx_dir, data, adapter, resume=True))
    # A checkpoint written before the eval questions were fingerprinted still resumes.
    state_file = latest_checkpoint(adapter) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["fingerprint"]["eval_data_hash"]
    state_file.write_text(json.dumps(state))
    Trainer(config(tiny_mlx_dir, data, adapter, resume=True))


def test_kill_mid_save_keeps_the_last_good_checkpoint(
    tiny_mlx_dir, dataset, uninterrupted, tmp_path, monkeypatch
):
    adapter = tmp_path / "adapter"
    real_save = checkpoints.atomic_save_safetensors
    calls = []

    def dies_on_second_checkpoint(path, arrays, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise Interrupt("killed while writing the optimizer state")
        real_save(path, arrays, metadata)

    monkeypatch.setattr(checkpoints, "atomic_save_safetensors", dies_on_second_checkpoint)
    with pytest.raises(Interrupt):
        train(config(tiny_mlx_dir, dataset, adapter), log=lambda _: None)
    monkeypatch.setattr(checkpoints, "atomic_save_safetensors", real_save)
    # A SIGKILL would also leave staging debris and could leave a directory without state.
    (adapter / "checkpoints" / ".step-000004.x.staging").mkdir()
    (adapter / "checkpoints" / "step-000006").mkdir()
    assert latest_checkpoint(adapter) == adapter / "checkpoints" / "step-000002"

    train(config(tiny_mlx_dir, dataset, adapter, resume=True), log=lambda _: None)
    for name, value in uninterrupted[1].items():
        np.testing.assert_array_equal(adapter_arrays(adapter)[name], value, err_msg=name)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_mlx_dir, dataset, tmp_path):
    adapter = tmp_path / "adapter"

    def poison(stats: StepStats) -> None:
        if stats.step == 2:
            layer = trainer.model.layers[0].mixer.qkv_proj
            layer.lora_a = mx.full(layer.lora_a.shape, float("nan"))

    trainer = Trainer(config(tiny_mlx_dir, dataset, adapter), on_step=poison, log=lambda _: None)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss nan.*step-000002"):
        trainer.run()
    assert [s for s, _ in list_checkpoints(adapter)] == [2]
    saved = adapter_arrays(adapter / "checkpoints" / "step-000002")
    assert all(np.isfinite(v).all() for v in saved.values())
    assert not (adapter / "adapters.safetensors").exists()


def test_leakage_guard_runs_before_training(tiny_mlx_dir, tmp_path):
    data = write_dataset(tmp_path / "leaky", leak=True)
    with pytest.raises(LeakageError, match="What time is it in Tokyo"):
        Trainer(config(tiny_mlx_dir, data, tmp_path / "adapter"))
    assert not (tmp_path / "adapter").exists()


def test_adapter_is_saved_in_mlx_form_with_provenance(
    tiny_hf_dir, tiny_mlx_dir, dataset, uninterrupted
):
    result, weights = uninterrupted
    document = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert (document["r"], document["lora_alpha"], document["lora_dropout"]) == (4, 8.0, 0.1)
    assert document["target_modules"] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    # The converter records the checkpoint it converted; the adapter names that as its base.
    assert document["base_model_name_or_path"] == str(tiny_hf_dir)
    assert "base_model_revision" in document
    assert document["data_recipe"] == "test-recipe"
    assert document["call_format"] == "plamo"  # the dataset's, from its manifest
    expected_hash = hashlib.sha256((dataset / "train.jsonl").read_bytes()).hexdigest()
    assert document["data_hash"] == expected_hash
    assert (document["train_examples"], document["dropped_too_long"], document["steps"]) == (
        12,
        0,
        6,
    )
    assert any(np.abs(v).max() > 0 for k, v in weights.items() if k.endswith("lora_b"))
    model = load_model(tiny_mlx_dir)
    load_adapter(model, result.adapter_dir)
    for name, value in lora_parameters(model).items():
        np.testing.assert_array_equal(np.array(value), weights[name])


def test_checkpoint_evals_and_mlflow_tracking(tiny_mlx_dir, dataset, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    adapter = tmp_path / "adapter"
    lines: list[str] = []
    settings = {"epochs": 1, "checkpoint_eval": True, "eval_max_new_tokens": 4, "eval_limit": 2}
    result = train(
        config(tiny_mlx_dir, dataset, adapter, mlflow=True, mlflow_uri=uri, **settings),
        log=lines.append,
    )
    assert sorted(result.evals) == [2, 3]
    eval_lines = [line for line in lines if " eval (" in line]
    assert len(eval_lines) == 2 and "args-exact" in eval_lines[0] and "false-call" in eval_lines[0]
    records = json.loads((adapter / "evals" / "step-000002.json").read_text())
    assert [r["kind"] for r in records["rows"]] == ["call", "nocall"]

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "plamo3-tool-calling"
    assert run.data.params["lora_r"] == "4" and run.data.params["grad_accum"] == "4"
    assert run.data.params["data_hash"] == result_hash(dataset)
    history = client.get_metric_history(result.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    for metric in ("lr", "examples_seen", "tokens_per_second", "minutes_elapsed", "peak_memory_gb"):
        assert client.get_metric_history(result.run_id, metric), metric
    for metric in ("parse_rate", "func_name_acc", "args_exact_match", "false_call_rate"):
        assert [m.step for m in client.get_metric_history(result.run_id, f"eval_{metric}")] == [
            2,
            3,
        ]
    assert "adapter_config.json" in [a.path for a in client.list_artifacts(result.run_id)]
    logged = [a.path for a in client.list_artifacts(result.run_id, "evals")]
    assert logged == ["evals/step-000002.json", "evals/step-000003.json"]


def result_hash(dataset: Path) -> str:
    return hashlib.sha256((dataset / "train.jsonl").read_bytes()).hexdigest()


def test_qlora_on_a_quantized_base_in_bfloat16(tiny_hf_dir, dataset, tmp_path):
    quantized = convert_checkpoint(
        tiny_hf_dir, tmp_path / "q4", quantize=True, q_group_size=32, progress=lambda x, **_: x
    )
    trainer = Trainer(
        # Uncompiled: the CPU backend would spend seconds building bf16 kernels on first use.
        config(quantized, dataset, tmp_path / "adapter", dtype="bfloat16", epochs=1, compile=False),
        log=lambda _: None,
    )
    base = trainer.model.layers[0].mixer.qkv_proj
    assert base.quantized and base.weight.dtype == mx.uint32 and base.scales.dtype == mx.bfloat16
    frozen = np.array(base.weight)
    result = trainer.run()
    assert all(np.isfinite(s.loss) for s in result.history)
    assert all(v.dtype == mx.float32 for v in lora_parameters(trainer.model).values())
    np.testing.assert_array_equal(np.array(base.weight), frozen)


def test_cli_trains_end_to_end(tiny_mlx_dir, dataset, tmp_path):
    adapter = tmp_path / "adapter"
    args = ["--data", str(dataset), "--model", str(tiny_mlx_dir), "--adapter-path", str(adapter)]
    args += ["--dtype", "float32", "--no-mlflow", "--no-progress", "--grad-accum", "6"]
    args += ["--max-length", "160", "--eval-limit", "2", "--eval-max-new-tokens", "3"]
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 0, result.output
    assert "step 2/2 eval" in result.output and "done: 2/2 steps" in result.output
    assert (adapter / "adapters.safetensors").is_file()
    again = CliRunner().invoke(train_command, args)
    assert again.exit_code != 0 and "--resume" in again.output


def test_prune_keeps_the_newest_checkpoints(tmp_path):
    for step in (2, 4, 6, 8):
        path = tmp_path / "checkpoints" / f"step-{step:06d}"
        path.mkdir(parents=True)
        (path / "trainer_state.json").write_text("{}")
    deleted = checkpoints.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["step-000002", "step-000004"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 8]
    assert checkpoints.prune_checkpoints(tmp_path, keep=0) == []
