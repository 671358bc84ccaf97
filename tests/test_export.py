"""PEFT export: key mapping, exact round trip, PyTorch/PEFT logits = MLX logits, fused model =
peft's merge_and_unload, model card, Hub upload (mocked) and refusals of adapters that do not fit.

Every adapter here has a random, non-zero lora_B: with lora_B at its zero init the adapter is a
no-op and every comparison below would pass whatever the export did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from tolerances import FP32_PARITY_ATOL

from adapters.card import model_card
from adapters.cli import export_command
from adapters.export import export_peft
from adapters.fuse import fuse_adapter
from convert.tiny import write_tiny_checkpoint
from eval.records import load_records
from mlx_plamo3.io import OUTPUT_MARKER
from mlx_plamo3.loading import load_model
from mlx_plamo3.lora import AdapterError, LoraConfig, lora_parameters
from mlx_plamo3.peft import (
    EXPORT_INFO,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    expected_mlx_shapes,
    mlx_to_peft_key,
    peft_to_mlx_key,
    peft_to_mlx_weights,
    read_peft_adapter,
)

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from lora_helpers import make_random_adapter  # noqa: E402

from mlx_plamo3.torch_reference import load_reference  # noqa: E402

SEED_RESULTS = Path(__file__).parent / "fixtures" / "seed-results"
# Fused weights vs peft's merge_and_unload, both fp32: W + scale * B @ A summed in a different
# order (rank-4 products), so a few float32 ulps of weights of size ~0.1.
MERGE_ATOL = 1e-6
# Minimum effect of the random adapter on the logits, so the parity checks are not vacuous.
MIN_LORA_EFFECT = 0.5


ADAPTER_METADATA = {
    "base_model_name_or_path": "pfnet/plamo-3-nict-2b-base",
    "base_model_revision": "main",
    "data_recipe": "v2",
    "data_hash": "0123abcd",
}


def make_adapter(model_dir: Path, out: Path, **kwargs):
    """An MLX base + random non-zero LoRA saved to `out`; returns the model."""
    kwargs.setdefault("metadata", ADAPTER_METADATA)
    return make_random_adapter(model_dir, out, **kwargs)[0]


@pytest.fixture(scope="module")
def adapter(tiny_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("mlx-adapter") / "adapter"
    return out, make_adapter(tiny_hf_dir, out)


@pytest.fixture(scope="module")
def exported(adapter, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("peft") / "peft"
    return export_peft(adapter[0], out, results=[SEED_RESULTS / "lora-v2.json"])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny models: thread start-up costs more than the math, and parallel tests contend.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tokens(length: int, vocab: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(4, vocab, length).tolist()


# ---- key mapping ----------------------------------------------------------------------------


def test_key_mapping_is_a_prefix_a_rename_and_back():
    key = "model.layers.layers.3.mixer.qkv_proj.lora_a"
    peft_key = "base_model.model.model.layers.layers.3.mixer.qkv_proj.lora_A.weight"
    assert mlx_to_peft_key(key) == peft_key
    assert peft_to_mlx_key(peft_key) == key
    assert mlx_to_peft_key("model.layers.layers.0.mlp.down_proj.lora_b") == (
        "base_model.model.model.layers.layers.0.mlp.down_proj.lora_B.weight"
    )


@pytest.mark.parametrize(
    "bad",
    ["model.layers.layers.0.mlp.down_proj.weight", "lora_a", "x.lora_c"],
)
def test_unknown_mlx_keys_are_refused(bad: str):
    with pytest.raises(AdapterError, match="unknown MLX LoRA key"):
        mlx_to_peft_key(bad)


@pytest.mark.parametrize(
    "bad",
    [
        "model.layers.layers.0.mlp.down_proj.lora_A.weight",  # no base_model.model. prefix
        "base_model.model.model.layers.layers.0.mlp.down_proj.lora_A.default.weight",
        "base_model.model.model.layers.layers.0.mlp.down_proj.weight",
        "base_model.model.model.layers.layers.0.mlp.down_proj.lora_A.bias",
    ],
)
def test_unknown_peft_keys_are_refused(bad: str):
    with pytest.raises(AdapterError, match="unknown PEFT LoRA key"):
        peft_to_mlx_key(bad)


def test_expected_shapes_from_config_match_the_lora_layers(adapter):
    _, model = adapter
    found = {k: tuple(v.shape) for k, v in lora_parameters(model).items()}
    config = LoraConfig(r=4, lora_alpha=8.0)
    assert expected_mlx_shapes(model.args, config.r, config.target_modules) == found


# ---- the exported files -----------------------------------------------------------------------


def test_round_trip_is_exact_and_not_vacuous(adapter, exported: Path):
    _, model = adapter
    ours = lora_parameters(model)
    assert all(mx.abs(v).max().item() > 0.01 for k, v in ours.items() if k.endswith("lora_b"))
    stored = mx.load(str(exported / PEFT_WEIGHTS))
    key = "model.layers.layers.1.mlp.gate_up_proj"
    assert stored[mlx_to_peft_key(f"{key}.lora_a")].shape == (4, 64)  # [r, in]
    assert stored[mlx_to_peft_key(f"{key}.lora_b")].shape == (256, 4)  # [out, r]
    back = peft_to_mlx_weights(stored)
    assert set(back) == set(ours)
    for k in ours:
        assert mx.array_equal(back[k], ours[k]).item(), k


def test_adapter_config_is_what_peft_reads(exported: Path):
    config = json.loads((exported / PEFT_CONFIG).read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8.0, 0.0)
    assert config["target_modules"] == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    assert config["bias"] == "none"
    assert config["base_model_name_or_path"] == "pfnet/plamo-3-nict-2b-base"
    assert config["revision"] == "main"
    loaded = peft.PeftConfig.from_pretrained(str(exported))
    assert (loaded.r, loaded.lora_alpha) == (4, 8.0)
    assert set(loaded.target_modules) == set(config["target_modules"])
    info = json.loads((exported / EXPORT_INFO).read_text())
    assert info["mlx_adapter_config"]["data_hash"] == "0123abcd"


def test_peft_logits_equal_mlx_lora_logits(adapter, exported: Path, tiny_hf_dir: Path):
    _, model = adapter
    # Longer than the tiny model's 16-token window, so sliding layers are exercised.
    ids = tokens(40, model.args.vocab_size)
    ours = np.array(model(mx.array([ids])))
    base = load_reference(tiny_hf_dir, dtype=torch.float32)
    with torch.no_grad():
        plain = base(input_ids=torch.tensor([ids])).logits.numpy()
        wrapped = peft.PeftModel.from_pretrained(base, str(exported)).eval()
        theirs = wrapped(input_ids=torch.tensor([ids])).logits.numpy()
    assert np.abs(theirs - plain).max() > MIN_LORA_EFFECT  # the adapter really acts
    assert np.abs(ours - theirs).max() <= FP32_PARITY_ATOL


def test_bfloat16_export_is_the_rounded_fp32_export(adapter, tmp_path: Path):
    out = export_peft(adapter[0], tmp_path / "bf16", dtype="bfloat16")
    stored = mx.load(str(out / PEFT_WEIGHTS))
    fp32 = {mlx_to_peft_key(k): v.T for k, v in lora_parameters(adapter[1]).items()}
    for key, value in stored.items():
        assert value.dtype == mx.bfloat16
        assert mx.array_equal(value, fp32[key].astype(mx.bfloat16)).item()


def test_fused_model_equals_merge_and_unload(adapter, exported, tiny_hf_dir, tmp_path):
    fused = fuse_adapter(adapter[0], tiny_hf_dir, tmp_path / "fused", dtype="float32")
    from safetensors.torch import load_file

    ours = load_file(str(fused / "model.safetensors"))
    base = load_reference(tiny_hf_dir, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, str(exported)).merge_and_unload()
    theirs = merged.state_dict()
    assert set(ours) == set(theirs)
    plain = load_file(str(tiny_hf_dir / "model.safetensors"))
    qkv = "model.layers.layers.0.mixer.qkv_proj.weight"
    assert (ours[qkv] - plain[qkv]).abs().max() > 1e-3  # the merge changed the weights
    for key in theirs:
        assert torch.allclose(ours[key], theirs[key], atol=MERGE_ATOL, rtol=0), key
    config = json.loads((fused / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["model_type"] == "plamo3"
    assert (fused / "tokenizer.jsonl").is_file()
    # The fused checkpoint loads in MLX and computes what base + LoRA computes.
    ids = tokens(24, adapter[1].args.vocab_size, seed=3)
    fused_logits = np.array(load_model(fused)(mx.array([ids])))
    lora_logits = np.array(adapter[1](mx.array([ids])))
    assert np.abs(fused_logits - lora_logits).max() <= FP32_PARITY_ATOL


def test_fusing_into_a_quantized_mlx_base_dequantizes_first(adapter, tiny_hf_dir, tmp_path):
    from convert.convert import convert_checkpoint

    quantized = convert_checkpoint(
        tiny_hf_dir,
        tmp_path / "q8",
        dtype="float32",
        quantize=True,
        q_bits=8,
        q_group_size=32,
        progress=lambda items, **_: items,
    )
    fused = fuse_adapter(adapter[0], quantized, tmp_path / "fused", dtype="float32")
    config = json.loads((fused / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    from mlx_plamo3.lora import load_adapter

    reference = load_model(quantized)
    load_adapter(reference, adapter[0])
    reference.eval()
    ids = mx.array([tokens(24, reference.args.vocab_size, seed=5)])
    diff = mx.abs(load_model(fused)(ids) - reference(ids)).max().item()
    assert diff <= FP32_PARITY_ATOL


# ---- refusals ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base of another shape (hidden size 32)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("other") / "hf", hidden_size=32)


def test_fusing_into_another_base_is_refused(adapter, other_base, tmp_path):
    with pytest.raises(AdapterError, match="base model of other shapes") as info:
        fuse_adapter(adapter[0], other_base, tmp_path / "fused")
    assert "fingerprint" in str(info.value)
    assert not (tmp_path / "fused").exists()


def test_adapter_whose_config_disagrees_with_its_weights_is_refused(exported, tmp_path):
    broken = shutil.copytree(exported, tmp_path / "rank")
    config = json.loads((broken / PEFT_CONFIG).read_text())
    (broken / PEFT_CONFIG).write_text(json.dumps({**config, "r": 8}))
    with pytest.raises(AdapterError, match=r"rank mismatch at model\.layers\.layers\.0"):
        read_peft_adapter(broken)
    targets = shutil.copytree(exported, tmp_path / "targets")
    (targets / PEFT_CONFIG).write_text(json.dumps({**config, "target_modules": ["qkv_proj"]}))
    with pytest.raises(AdapterError, match="target_modules mismatch"):
        read_peft_adapter(targets)
    dora = shutil.copytree(exported, tmp_path / "dora")
    (dora / PEFT_CONFIG).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterError, match="use_dora"):
        read_peft_adapter(dora)


def test_export_cli_checks_the_adapter_against_a_given_base(adapter, other_base, tmp_path):
    result = CliRunner().invoke(
        export_command,
        ["--adapter", str(adapter[0]), "--out", str(tmp_path / "out"), "--base", str(other_base)],
    )
    assert result.exit_code != 0
    assert "base model of other shapes" in result.output
    assert not (tmp_path / "out").exists()


# ---- the model card and the CLI -------------------------------------------------------------


def test_card_has_base_license_data_recipe_and_eval_with_intervals(exported: Path):
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlicense: other\nlicense_name: plamo-community-license\n")
    assert "base_model: pfnet/plamo-3-nict-2b-base" in card
    assert "PLaMo Community License" in card
    assert "`data_recipe`: v2" in card and "`data_hash`: 0123abcd" in card
    assert "LoRA r=4, lora_alpha=8.0 (scale 2)" in card
    # lora-v2: 40/40 on every call metric, 2/12 false calls (the seed's numbers).
    assert "40/40: 95% CI lower bound 91.2%" in card
    assert "2/12 = 16.7% (95% CI 4.7%–44.8%)" in card
    assert "PeftModel.from_pretrained" in card
    shipped = exported / "eval" / "lora-v2.json"
    assert shipped.read_bytes() == (SEED_RESULTS / "lora-v2.json").read_bytes()


def test_card_tabulates_every_records_file():
    records = [load_records(SEED_RESULTS / f"{name}.json") for name in ("base", "lora-v2")]
    peft_config = {
        "base_model_name_or_path": "./local-base",
        "r": 16,
        "lora_alpha": 32,
        "target_modules": ["qkv_proj"],
    }
    card = model_card({"format": "mlx-plamo3-lora"}, peft_config, records)
    rows = [line for line in card.splitlines() if line.startswith("| base |")]
    assert len(rows) == 2  # seed and strict tables
    assert "13/40 = 32.5%" in rows[0]  # the seed's base func-name rate
    assert "base_model:" not in card  # a local path is not a Hub id


def test_export_cli_writes_the_directory_and_refuses_to_overwrite(adapter, tmp_path):
    out = tmp_path / "peft"
    args = ["--adapter", str(adapter[0]), "--out", str(out), "--dtype", "float16"]
    base_records = str(SEED_RESULTS / "base.json")
    result = CliRunner().invoke(export_command, [*args, "--results", base_records])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert names == {PEFT_WEIGHTS, PEFT_CONFIG, "README.md", EXPORT_INFO, "eval", OUTPUT_MARKER}
    stored = mx.load(str(out / PEFT_WEIGHTS))
    assert {v.dtype for v in stored.values()} == {mx.float16}
    again = CliRunner().invoke(export_command, args)
    assert again.exit_code != 0 and "--force" in again.output
    forced = CliRunner().invoke(export_command, [*args, "--force"])
    assert forced.exit_code == 0, forced.output


def test_export_cli_defaults_to_the_artifacts_results(adapter, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MLX_PLAMO_HOME", str(home))
    (home / "results").mkdir(parents=True)
    shutil.copy(SEED_RESULTS / "lora-v2.json", home / "results" / "lora.json")
    result = CliRunner().invoke(export_command, ["--adapter", str(adapter[0])])
    assert result.exit_code == 0, result.output
    out = home / "adapters" / f"{adapter[0].name}-peft"
    assert (out / "eval" / "lora.json").is_file()
    assert "| lora-v2 |" in (out / "README.md").read_text()  # the summary names it


def test_export_cli_fused_writes_a_loadable_checkpoint(adapter, tiny_hf_dir, tmp_path):
    out = tmp_path / "peft"
    result = CliRunner().invoke(
        export_command,
        ["--adapter", str(adapter[0]), "--out", str(out), "--fused", "--base", str(tiny_hf_dir)],
    )
    assert result.exit_code == 0, result.output
    fused = tmp_path / "peft-fused"
    assert json.loads((fused / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ids = tokens(8, adapter[1].args.vocab_size)
    logits = load_reference(fused)(input_ids=torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()


# ---- Hub upload (HfApi mocked: tests never touch the network) -------------------------------


class FakeApi:
    """Stands in for huggingface_hub.HfApi and records what the export asked of it."""

    calls: ClassVar[list[tuple[str, dict]]] = []

    def __init__(self, token: str | None = None):
        FakeApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs):
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        FakeApi.calls.append(("upload_folder", kwargs))
        return "commit"


def test_push_to_hub_uploads_the_folder_without_writing_the_token(adapter, tmp_path, monkeypatch):
    secret = "hf_test_secret_token_value"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setattr("adapters.hub.HfApi", FakeApi)
    FakeApi.calls.clear()
    out = tmp_path / "peft"
    result = CliRunner().invoke(
        export_command,
        [
            *("--adapter", str(adapter[0]), "--out", str(out)),
            *("--push-to-hub", "me/plamo3-tools", "--private"),
        ],
    )
    assert result.exit_code == 0, result.output
    calls = dict(FakeApi.calls)
    assert calls["init"] == {"token": secret}
    assert calls["create_repo"]["repo_id"] == "me/plamo3-tools"
    assert calls["create_repo"]["private"] is True
    assert calls["upload_folder"]["folder_path"] == str(out)
    assert calls["upload_folder"]["repo_id"] == "me/plamo3-tools"
    assert secret not in result.output
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert "me/plamo3-tools" in (out / "README.md").read_text()  # the card names the repo


def test_push_to_hub_without_a_token_fails_before_any_work(adapter, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("adapters.hub.get_token", lambda: None)
    monkeypatch.setattr("adapters.hub.HfApi", FakeApi)
    FakeApi.calls.clear()
    out = tmp_path / "peft"
    result = CliRunner().invoke(
        export_command, ["--adapter", str(adapter[0]), "--out", str(out), "--push-to-hub", "me/x"]
    )
    assert result.exit_code != 0
    assert "no Hugging Face token" in result.output and "HF_TOKEN" in result.output
    assert not out.exists() and FakeApi.calls == []


def test_push_to_hub_refuses_a_malformed_repo_id(adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    result = CliRunner().invoke(
        export_command,
        ["--adapter", str(adapter[0]), "--out", str(tmp_path / "o"), "--push-to-hub", "no-slash"],
    )
    assert result.exit_code != 0 and "user/name" in result.output
    assert not (tmp_path / "o").exists()
