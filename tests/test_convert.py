"""`python -m convert` and `mlx-plamo tiny`: outputs, and clear errors that leave things intact."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from commands.main import main as cli_main
from convert import convert as convert_module
from convert.cli import convert_command
from convert.tiny import write_tiny_checkpoint
from mlx_plamo3 import load_model
from mlx_plamo3.loading import CheckpointError


def quiet(items, **_):
    return items


def convert(src: Path, dst: Path, **kwargs) -> Path:
    return convert_module.convert_checkpoint(src, dst, progress=quiet, **kwargs)


@pytest.fixture
def hf_copy(tiny_hf_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_hf_dir, tmp_path / "hf"))


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_tiny_is_deterministic_and_in_hf_layout(tmp_path):
    a = write_tiny_checkpoint(tmp_path / "a", seed=7)
    b = write_tiny_checkpoint(tmp_path / "b", seed=7)
    c = write_tiny_checkpoint(tmp_path / "c", seed=8)
    assert digest(a) == digest(b)
    assert digest(a)["model.safetensors"] != digest(c)["model.safetensors"]
    config = json.loads((a / "config.json").read_text())
    layers = config["num_hidden_layers"]
    full = [i for i in range(layers) if (i + 1) % config["sliding_window_pattern"] == 0]
    assert len(full) >= 1 and layers - len(full) >= 2
    keys = set(load_file(a / "model.safetensors"))
    assert "model.layers.layers.0.mixer.qkv_proj.weight" in keys
    assert "lm_head.weight" not in keys  # tied
    for name in ("tokenizer.jsonl", "tokenizer_config.json", "chat_template.jinja"):
        assert (a / name).is_file()


def test_tiny_cli_refuses_existing_output(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli_main, ["tiny", str(tmp_path / "t")]).exit_code == 0
    again = runner.invoke(cli_main, ["tiny", str(tmp_path / "t")])
    assert again.exit_code != 0 and "--force" in again.output


def test_python_dash_m_convert_end_to_end(tiny_hf_dir, tmp_path):
    out = tmp_path / "mlx"
    result = subprocess.run(
        [sys.executable, "-m", "convert", "--hf-path", str(tiny_hf_dir), "--mlx-path", str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    assert mx.load(str(out / "model.safetensors"))["model.norm.weight"].dtype == mx.bfloat16
    for name in ("tokenizer.jsonl", "chat_template.jinja"):
        assert (out / name).read_bytes() == (tiny_hf_dir / name).read_bytes()
    # tokenizer_config.json is rewritten to point at the generated tokenizer.json.
    assert (out / "tokenizer.json").is_file()
    written = json.loads((out / "config.json").read_text())
    assert written["torch_dtype"] == "bfloat16"
    assert written["_name_or_path"] == str(tiny_hf_dir)  # adapters name their base from it


def test_sharded_input_converts_to_the_same_model(hf_copy, tiny_hf_dir, tmp_path):
    weights = load_file(hf_copy / "model.safetensors")
    keys = sorted(weights)
    halves = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    weight_map = {}
    for name, part in halves.items():
        save_file({k: weights[k] for k in part}, str(hf_copy / name))
        weight_map |= dict.fromkeys(part, name)
    (hf_copy / "model.safetensors").unlink()
    (hf_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = load_model(convert(hf_copy, tmp_path / "out", dtype="float32"))
    tokens = mx.array([[5, 9, 20, 31, 7]])
    whole = load_model(tiny_hf_dir)  # the unsharded original, loaded in HF layout directly
    assert float(mx.abs(sharded(tokens) - whole(tokens)).max()) == 0.0
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) == 2


def test_missing_config_is_named(hf_copy, tmp_path):
    (hf_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        convert(hf_copy, tmp_path / "out")


def test_missing_shard_is_named(hf_copy, tmp_path):
    (hf_copy / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00009-of-00009.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="model-00009-of-00009"):
        convert(hf_copy, tmp_path / "out")


def test_truncated_safetensors_is_named(hf_copy, tmp_path):
    shard = hf_copy / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        convert(hf_copy, tmp_path / "out")


def test_wrong_model_type_is_refused(hf_copy, tmp_path):
    config = json.loads((hf_copy / "config.json").read_text())
    (hf_copy / "config.json").write_text(json.dumps({**config, "model_type": "plamo2"}))
    with pytest.raises(ValueError, match="model_type is 'plamo2'"):
        convert(hf_copy, tmp_path / "out")


def test_every_mismatch_is_listed_in_one_error(hf_copy, tmp_path):
    weights = load_file(hf_copy / "model.safetensors")
    weights["model.layers.layers.1.mlp.down_proj.weight"] = np.zeros((3, 3), np.float32)
    del weights["model.norm.weight"]
    weights["model.layers.layers.0.mixer.extra.weight"] = np.zeros(2, np.float32)
    save_file(weights, str(hf_copy / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        convert(hf_copy, tmp_path / "out")
    message = str(info.value)
    for needle in (
        "model.norm.weight",
        "mixer.extra.weight",
        "down_proj.weight: checkpoint (3, 3)",
    ):
        assert needle in message


def test_pickled_checkpoint_is_refused(hf_copy, tmp_path):
    (hf_copy / "model.safetensors").unlink()
    (hf_copy / "pytorch_model.bin").write_bytes(b"not even opened")
    with pytest.raises(CheckpointError, match="pickled"):
        convert(hf_copy, tmp_path / "out")


def test_existing_output_needs_force_and_survives_a_failed_run(hf_copy, tmp_path, monkeypatch):
    out = convert(hf_copy, tmp_path / "out", dtype="float32")
    before = digest(out)
    with pytest.raises(FileExistsError, match="--force"):
        convert(hf_copy, out)

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert_module.mx, "save_safetensors", fail)
    with pytest.raises(CheckpointError, match="no space left"):
        convert(hf_copy, out, force=True)
    assert digest(out) == before
    assert not [p for p in out.parent.iterdir() if "staging" in p.name]


def test_interrupted_conversion_leaves_no_complete_looking_output(hf_copy, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "copy_support_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(hf_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_reports_errors_without_traceback(hf_copy, tmp_path):
    (hf_copy / "config.json").unlink()
    result = CliRunner().invoke(
        convert_command, ["--hf-path", str(hf_copy), "--mlx-path", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "config.json is missing" in result.output


def test_quantized_output_loads_and_records_its_settings(tiny_hf_dir, tmp_path):
    out = convert(tiny_hf_dir, tmp_path / "q", quantize=True, q_bits=8, q_group_size=32)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 8}
    weights = mx.load(str(out / "model.safetensors"))
    assert "model.layers.layers.0.mixer.qkv_proj.scales" in weights
    assert load_model(out)(mx.array([[5, 6, 7]])).shape[-1] == config["vocab_size"]
