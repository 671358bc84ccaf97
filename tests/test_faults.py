"""The bad-input and fault catalog (issue 16): each case as a user would meet it, through the
command line, checking what the user sees and that nothing they did not ask to lose is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from commands.main import main as cli_main
from convert.cli import convert_command
from convert.tiny import write_tiny_checkpoint
from mlx_plamo3.io import OUTPUT_MARKER
from mlx_plamo3.loading import load_model
from mlx_plamo3.lora import checkpoint_weights_fingerprint, model_weights_fingerprint

sys.path.insert(0, str(Path(__file__).parent))
from lora_helpers import make_random_adapter


def run(args: list[str]):
    return CliRunner().invoke(cli_main, args)


def convert(hf: Path, out: Path, *extra: str):
    args = ["--hf-path", str(hf), "--mlx-path", str(out), "--dtype", "float32", *extra]
    return CliRunner().invoke(convert_command, args)


def no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output


def dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- 1. never delete what the command did not write -------------------------------------------


def test_convert_refuses_a_non_empty_directory_without_force(tiny_hf_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = convert(tiny_hf_dir, out)
    assert result.exit_code != 0 and "--force" in result.output
    no_traceback(result)
    assert (out / "notes.txt").read_text() == "keep me"


def test_convert_with_force_refuses_a_directory_it_did_not_write(tiny_hf_dir, tmp_path):
    parent = tmp_path / "models"
    for sibling in ("model-a", "model-b"):
        (parent / sibling).mkdir(parents=True)
        (parent / sibling / "config.json").write_text("{}")
    result = convert(tiny_hf_dir, parent, "--force")
    assert result.exit_code != 0
    assert "model-a/" in result.output and "was not written by" in result.output
    no_traceback(result)
    assert sorted(p.name for p in parent.iterdir()) == ["model-a", "model-b"]


def test_convert_with_force_replaces_its_own_output_but_not_added_files(tiny_hf_dir, tmp_path):
    out = tmp_path / "model"
    assert convert(tiny_hf_dir, out).exit_code == 0
    assert json.loads((out / OUTPUT_MARKER).read_text())["written_by"] == "python -m convert"
    result = convert(tiny_hf_dir, out, "--force")
    assert result.exit_code == 0, result.output
    (out / "notes.txt").write_text("keep me")
    result = convert(tiny_hf_dir, out, "--force")
    assert result.exit_code != 0 and "notes.txt" in result.output
    assert (out / "notes.txt").read_text() == "keep me" and (out / "config.json").is_file()


def test_convert_with_force_refuses_another_commands_output(tiny_hf_dir, tmp_path):
    out = tmp_path / "hf-copy"
    assert run(["tiny", str(out)]).exit_code == 0
    result = convert(tiny_hf_dir, out, "--force")
    assert result.exit_code != 0 and "written by mlx-plamo tiny" in result.output
    assert (out / "config.json").is_file()


@pytest.fixture(scope="module")
def adapter_dir(tiny_hf_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    make_random_adapter(tiny_hf_dir, out)
    return out


@pytest.mark.parametrize("where", ["same", "parent"])
def test_export_refuses_to_write_over_the_adapter_it_exports(adapter_dir, where):
    before = {p.name: p.read_bytes() for p in adapter_dir.iterdir()}
    out = adapter_dir if where == "same" else adapter_dir.parent
    result = run(["export", "--adapter", str(adapter_dir), "--out", str(out), "--force"])
    assert result.exit_code != 0 and "--adapter" in result.output
    no_traceback(result)
    assert {p.name: p.read_bytes() for p in adapter_dir.iterdir()} == before


def test_export_force_replaces_an_earlier_export(adapter_dir, tmp_path):
    out = tmp_path / "peft"
    assert run(["export", "--adapter", str(adapter_dir), "--out", str(out)]).exit_code == 0
    result = run(["export", "--adapter", str(adapter_dir), "--out", str(out)])
    assert result.exit_code != 0 and "--force" in result.output
    result = run(["export", "--adapter", str(adapter_dir), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert OUTPUT_MARKER not in result.output  # the listing shows the export's own files


def test_eval_refuses_to_overwrite_records_without_force(tiny_mlx_dir, tmp_path):
    out = tmp_path / "base.json"
    out.write_text('{"summary": {}, "rows": []}')
    args = ["eval", "--condition", "base", "--model", str(tiny_mlx_dir), "--out", str(out)]
    result = run(args)
    assert result.exit_code != 0 and "--force" in result.output
    no_traceback(result)
    assert out.read_text() == '{"summary": {}, "rows": []}'


def test_stale_staging_directories_are_removed_and_reported(tmp_path):
    out = tmp_path / "hf"
    stale = [tmp_path / f".hf.{dead_pid()}.x1.staging", tmp_path / ".hf.legacy.staging"]
    live = tmp_path / f".hf.{os.getpid()}.x2.staging"
    for directory in (*stale, live):
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"\0" * 16)
    command = [sys.executable, "-m", "commands", "tiny", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert not any(d.exists() for d in stale)
    assert live.is_dir()  # a running writer's staging directory is left alone
    lines = [line for line in result.stderr.splitlines() if "interrupted" in line]
    assert len(lines) == 2 and all(".staging" in line for line in lines)


# ---- 2. one clear line, never a traceback ------------------------------------------------------


def one_line_error(result, *needles: str) -> None:
    """Failed with one message line (click's 'Error: ...') holding every needle."""
    assert result.exit_code != 0
    no_traceback(result)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert errors, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)


def broken_adapter(adapter_dir: Path, tmp_path: Path, damage: str) -> Path:
    """A copy of the adapter with its weights or config damaged."""
    import shutil

    copy = tmp_path / f"adapter-{damage}"
    shutil.copytree(adapter_dir, copy)
    weights, config = copy / "adapters.safetensors", copy / "adapter_config.json"
    if damage == "missing":
        weights.unlink()
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "garbage":
        weights.write_bytes(b"not a safetensors file at all")
    elif damage == "config":
        config.write_text('{"format": "mlx-plamo3-lora", "r": ')
    elif damage == "config-keys":
        config.write_text('{"format": "mlx-plamo3-lora", "r": 4}')
    return copy


DAMAGES = ["missing", "empty", "truncated", "garbage", "config", "config-keys"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_adapter_is_one_line_naming_the_file(adapter_dir, tiny_mlx_dir, tmp_path, damage):
    bad = broken_adapter(adapter_dir, tmp_path, damage)
    name = "adapter_config.json" if damage.startswith("config") else "adapters.safetensors"
    model = ["--model", str(tiny_mlx_dir)]
    data = ["--data", str(toy_dataset(tmp_path / "data"))]
    commands = {
        "eval": ["eval", "--condition", "lora", "--adapter", str(bad), *model, *data],
        "generate": ["generate", "--adapter", str(bad), "--prompt", "hi", *model],
        "export": ["export", "--adapter", str(bad), "--out", str(tmp_path / "out")],
    }
    for command, args in commands.items():
        result = run(args)
        one_line_error(result, name)
        assert str(bad) in result.output.replace("\n", ""), command


def test_convert_of_a_hub_id_offline_is_one_line(tmp_path):
    result = convert("pfnet/plamo-3-nict-2b-base", tmp_path / "out")  # HF_HUB_OFFLINE=1 here
    one_line_error(result, "pfnet/plamo-3-nict-2b-base", "local checkpoint directory")
    assert not (tmp_path / "out").exists()


def test_convert_refuses_a_source_without_the_vocabulary(tiny_hf_dir, tmp_path):
    import shutil

    source = tmp_path / "hf"
    shutil.copytree(tiny_hf_dir, source)
    (source / "tokenizer.jsonl").unlink()
    one_line_error(convert(source, tmp_path / "out"), "tokenizer.jsonl")
    assert not (tmp_path / "out").exists()


def test_an_index_file_that_is_not_json_is_named(tiny_mlx_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_mlx_dir, model)
    (model / "model.safetensors.index.json").write_text("{not json")
    result = run(["generate", "--model", str(model), "--prompt", "hi"])
    one_line_error(result, "model.safetensors.index.json")


@pytest.mark.parametrize(
    "messages",
    ['{"role": "user", "content": "hi"}', "[]", '[{"role": "user"}]', '[["user", "hi"]]', "{"],
)
def test_generate_messages_of_the_wrong_structure(tiny_mlx_dir, tmp_path, messages):
    path = tmp_path / "chat.json"
    path.write_text(messages)
    result = run(["generate", "--model", str(tiny_mlx_dir), "--messages", str(path)])
    one_line_error(result, str(path))


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "--batch-size", "0"],
        ["eval", "--limit", "0"],
        ["eval", "--max-new-tokens", "0"],
        ["eval", "--memory-limit", "-1"],
        ["generate", "--prompt", "hi", "--max-new-tokens", "0"],
        ["generate", "--prompt", "hi", "--temperature", "-0.5"],
        ["generate", "--prompt", "hi", "--top-p", "0"],
        ["generate", "--prompt", "hi", "--top-p", "1.5"],
    ],
)
def test_non_positive_counts_and_bad_sampling_settings_are_refused(tiny_mlx_dir, args):
    result = run([*args, "--model", str(tiny_mlx_dir)])
    assert result.exit_code == 2 and "Invalid value" in result.output, result.output
    no_traceback(result)


def toy_dataset(directory: Path, train_rows: int = 4, eval_rows: int = 1) -> Path:
    def row(question: str, city: str) -> dict:
        answer = json.dumps({"name": "get_time", "arguments": {"city": city}})
        messages = [
            {"role": "system", "content": 'Tools:\n{"name": "get_time"}'},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        return {"messages": messages, "kind": "call", "gold": answer}

    directory.mkdir(parents=True)
    train = [row(f"Time in city {i}?", f"city {i}") for i in range(train_rows)]
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    cities = ["Accra", "Lima", "Oslo", "Hanoi"][:eval_rows]
    evals = [row(f"Time in {city}?", city) for city in cities]
    (directory / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    return directory


def test_train_with_the_adapter_path_on_a_file(tiny_mlx_dir, tmp_path):
    data = toy_dataset(tmp_path / "data")
    target = tmp_path / "adapter.txt"
    target.write_text("mine")
    args = ["train", "--model", str(tiny_mlx_dir), "--data", str(data)]
    result = run([*args, "--adapter-path", str(target), "--dtype", "float32"])
    one_line_error(result, "is a file")
    assert target.read_text() == "mine"


def test_data_build_on_a_garbage_parquet_names_the_file(tmp_path):
    source = tmp_path / "rows.parquet"
    source.write_bytes(b"garbage garbage garbage")
    result = run(
        ["data", "build", "--recipe", "v2", "--source", str(source), "--out", str(tmp_path / "d")]
    )
    one_line_error(result, str(source), "parquet")


# ---- 3. bad data is an error, not an empty success --------------------------------------------


@pytest.mark.parametrize("content", ["", "not json\n{also not\n", '{"foo": 1}\n{"bar": 2}\n'])
def test_data_build_fails_when_a_source_gives_no_usable_rows(tmp_path, content):
    source = tmp_path / "rows.jsonl"
    source.write_text(content)
    out = tmp_path / "d"
    result = run(
        ["data", "build", "--recipe", "v2", "--source", str(source), "--out", str(out), "--quiet"]
    )
    audit = tmp_path / "d.audit.json"
    one_line_error(result, str(source), str(audit))
    assert not out.exists()
    sources = json.loads(audit.read_text())["sources"]
    assert sources[0]["usable"] == 0 and sources[0]["spec"] == str(source)


def test_train_on_an_empty_training_set_says_it_is_empty(tiny_mlx_dir, tmp_path):
    data = toy_dataset(tmp_path / "data", train_rows=0)
    result = run(["train", "--model", str(tiny_mlx_dir), "--data", str(data)])
    one_line_error(result, "train.jsonl is empty")


# ---- 6. small usability gaps -------------------------------------------------------------------


def test_bare_command_prints_help_and_succeeds():
    result = run([])
    assert result.exit_code == 0 and "Commands" in result.output and "train" in result.output


# ---- 5. tokenizer and generation fidelity edges ------------------------------------------------


def test_added_tokens_are_cut_out_whole():
    from test_tokenizer import make_tokenizer

    # "abc" is in the vocabulary but scores so low that the segmenter spells it a-b-c.
    pieces = {"abc": -100.0, "a": -1.0, "b": -1.0, "c": -1.0}
    plain = make_tokenizer(pieces)
    abc = plain.convert_tokens_to_ids("abc")
    assert abc not in plain.encode("x abc y", add_special_tokens=False)
    added = {str(abc): {"content": "abc", "special": False}}
    tokenizer = make_tokenizer(pieces, {"added_tokens_decoder": added})
    ids = tokenizer.encode("x abc y abc", add_special_tokens=False)
    assert ids.count(abc) == 2 and tokenizer.decode(ids) == "x abc y abc"
    # Not a special token: decoding with skip_special_tokens keeps it.
    assert tokenizer.decode(ids, skip_special_tokens=True) == "x abc y abc"


def test_generation_stops_on_the_eos_ids_of_generation_config(tiny_mlx_dir, tmp_path):
    import shutil

    from mlx_plamo3.generate import stop_token_ids
    from mlx_plamo3.tokenizer import Plamo3Tokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_mlx_dir, model)
    base = stop_token_ids(Plamo3Tokenizer.from_pretrained(model))
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 77, 91]}))
    assert stop_token_ids(Plamo3Tokenizer.from_pretrained(model)) == base | {2, 77, 91}
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": "two"}))
    result = run(["generate", "--model", str(model), "--prompt", "hi"])
    one_line_error(result, "generation_config.json")


def test_print_config_shows_the_paths_a_run_would_use(tmp_path):
    # conftest points MLX_PLAMO_HOME at tmp_path / "artifacts".
    home = tmp_path / "artifacts"
    result = run(["train", "--data", "v2", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = __import__("yaml").safe_load(result.output)
    assert printed["model"] == str(home / "models" / "plamo-3-nict-2b-base")
    assert printed["adapter_path"] == str(home / "adapters" / "plamo3-v2-r16")
    assert printed["data"] == "v2"  # not built yet: the name stays
    built = toy_dataset(home / "data" / "v2")
    printed = __import__("yaml").safe_load(run(["train", "--print-config"]).output)
    assert printed["data"] == str(built) and printed["run_name"] == "plamo3-v2-r16"


# ---- 4. mismatches diagnosed, not misread ------------------------------------------------------


@pytest.fixture(scope="module")
def twin_base(tmp_path_factory) -> Path:
    """A tiny base with the shapes of `tiny_hf_dir` and other weights (another seed)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("twin") / "hf", seed=1)


def test_the_base_weights_fingerprint_tells_same_shape_bases_apart(
    tiny_hf_dir, twin_base, tmp_path
):
    # One checkpoint keeps its fingerprint through every conversion; a twin does not share it.
    bf16, quantized = tmp_path / "bf16", tmp_path / "q4"
    assert convert(tiny_hf_dir, bf16, "--dtype", "bfloat16").exit_code == 0
    assert convert(tiny_hf_dir, quantized, "--quantize", "--q-group-size", "32").exit_code == 0
    assert "scales" in json.dumps(
        json.loads((quantized / "model.safetensors.index.json").read_text())
    )
    original = checkpoint_weights_fingerprint(tiny_hf_dir)
    assert checkpoint_weights_fingerprint(bf16) == original
    assert checkpoint_weights_fingerprint(quantized) == original
    assert model_weights_fingerprint(load_model(quantized)) == original
    assert checkpoint_weights_fingerprint(twin_base) != original


def other_base_refused_then_warned(args: list[str]) -> None:
    refused = run(args)
    one_line_error(refused, "different base", "--allow-other-base")
    allowed = run([*args, "--allow-other-base"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning: the adapter" in allowed.output and "different base" in allowed.output


def test_eval_and_generate_refuse_an_adapter_of_a_same_shape_twin(adapter_dir, twin_base, tmp_path):
    twin = tmp_path / "twin-mlx"
    assert convert(twin_base, twin).exit_code == 0
    data = str(toy_dataset(tmp_path / "data"))
    eval_args = ["eval", "--adapter", str(adapter_dir), "--model", str(twin), "--data", data]
    other_base_refused_then_warned(
        [*eval_args, "--max-new-tokens", "2", "--out", str(tmp_path / "r.json")]
    )
    gen_args = ["generate", "--model", str(twin), "--adapter", str(adapter_dir), "--prompt", "hi"]
    other_base_refused_then_warned([*gen_args, "--max-new-tokens", "2"])


def test_export_refuses_an_adapter_of_a_same_shape_twin(adapter_dir, twin_base, tmp_path):
    args = ["export", "--adapter", str(adapter_dir), "--base", str(twin_base)]
    other_base_refused_then_warned([*args, "--out", str(tmp_path / "peft")])
    other_base_refused_then_warned([*args, "--out", str(tmp_path / "both"), "--fused"])
    assert (tmp_path / "both-fused" / "config.json").is_file()


def test_records_name_absolute_paths(adapter_dir, tiny_hf_dir, tmp_path, monkeypatch):
    data = toy_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    relative = [os.path.relpath(p, tmp_path) for p in (adapter_dir, tiny_hf_dir, data)]
    args = ["eval", "--adapter", relative[0], "--model", relative[1], "--data", relative[2]]
    result = run([*args, "--max-new-tokens", "2", "--out", "records.json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "records.json").read_text())["summary"]
    assert summary["adapter"] == str(adapter_dir.resolve())
    assert summary["model"] == str(tiny_hf_dir.resolve())
    assert summary["data"] == str((data / "eval.jsonl").resolve())
    assert summary["base_weights_fingerprint"] == checkpoint_weights_fingerprint(tiny_hf_dir)


@pytest.fixture(scope="module")
def checked(adapter_dir, tiny_hf_dir, tmp_path_factory) -> dict[str, Path]:
    """MLX records of `adapter_dir` on 3 questions, base records, and the PEFT export."""
    root = tmp_path_factory.mktemp("checked")
    data = toy_dataset(root / "data", eval_rows=3)
    common = ["--model", str(tiny_hf_dir), "--data", str(data), "--max-new-tokens", "6"]
    for condition, extra in (("lora", ["--adapter", str(adapter_dir)]), ("base", [])):
        out = str(root / f"{condition}.json")
        result = run(["eval", "--condition", condition, *extra, *common, "--out", out])
        assert result.exit_code == 0, result.output
    peft = root / "peft"
    assert run(["export", "--adapter", str(adapter_dir), "--out", str(peft)]).exit_code == 0
    return {"data": data, "lora": root / "lora.json", "base": root / "base.json", "peft": peft}


def check_torch(checked: dict[str, Path], base: Path, *extra: str, records: Path | None = None):
    records = records or checked["lora"]
    args = ["check-torch", "--base", str(base), "--adapter", str(checked["peft"])]
    return run(
        [*args, "--results", str(records), "--data", str(checked["data"]), "--quiet", *extra]
    )


def test_check_torch_limit_and_no_future_warning(checked, tiny_hf_dir, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = check_torch(
            checked, tiny_hf_dir, "--limit", "2", "--out", str(tmp_path / "r.json")
        )
    assert result.exit_code == 0, result.output
    assert "agreement: 2/2 questions identical" in result.output and "--limit 2" in result.output
    assert "next: mlx-plamo export --adapter" in result.output and "--push-to-hub" in result.output
    assert "warning" not in result.output
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["n"], report["limit"], report["warnings"]) == (2, 2, [])


def test_check_torch_says_the_records_have_no_adapter(checked, tiny_hf_dir):
    result = check_torch(checked, tiny_hf_dir, records=checked["base"])
    one_line_error(result, "has no adapter", "condition base")


def test_check_torch_says_different_base(checked, twin_base, tmp_path):
    refused = check_torch(checked, twin_base)
    one_line_error(refused, "different base", "--allow-other-base")
    allowed = check_torch(
        checked, twin_base, "--allow-other-base", "--out", str(tmp_path / "r.json")
    )
    assert "different base" in allowed.output and "look for a port bug" not in allowed.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["warnings"]) == 2  # the adapter and the records


def test_check_torch_never_skips_its_identity_check_silently(checked, tiny_hf_dir, tmp_path):
    records = json.loads(checked["lora"].read_text())
    records["summary"]["adapter"] = str(tmp_path / "moved-away")
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(records))
    result = check_torch(checked, tiny_hf_dir, records=moved)
    assert result.exit_code == 0, result.output
    assert "identity check skipped" in result.output and "--mlx-adapter" in result.output


# ---- 6. small usability gaps -----------------------------------------------------------------


def test_help_texts_show_the_paths_used_under_mlx_plamo_home(tmp_path):
    home = tmp_path / "elsewhere"
    env = {**os.environ, "MLX_PLAMO_HOME": str(home)}

    def help_of(*command: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", *command, "--help"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return "".join(done.stdout.split())  # click wraps long lines, after a hyphen too

    assert str(home / "models" / "plamo-3-nict-2b-base") in help_of("commands", "eval")
    assert str(home / "results") in help_of("commands", "report")
    assert str(home / "adapters") in help_of("commands", "train")
    assert str(home / "data") in help_of("commands", "data", "build")
    export_help = help_of("commands", "export")
    assert str(home / "adapters") in export_help and "artifacts/" not in export_help
    assert "--mlx-path" in help_of("convert")  # `python -m convert` runs
    assert "artifacts/" not in help_of("commands", "train")


def test_tiny_takes_size_options(tmp_path):
    result = run(["tiny", str(tmp_path / "t"), "--layers", "2", "--hidden-size", "32"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 32)
    assert "next: python -m convert --hf-path" in result.output
    result = run(["tiny", str(tmp_path / "bad"), "--heads", "3", "--kv-heads", "2"])
    one_line_error(result, "is not a multiple of num_key_value_heads")
    assert not (tmp_path / "bad").exists()


def test_successful_commands_end_with_the_next_command(adapter_dir, tiny_hf_dir, tmp_path):
    converted = convert(tiny_hf_dir, tmp_path / "mlx")
    assert f"next: mlx-plamo generate --model {tmp_path / 'mlx'}" in converted.output
    data = toy_dataset(tmp_path / "data")
    records = tmp_path / "results" / "lora.json"
    common = ["--model", str(tiny_hf_dir), "--data", str(data), "--max-new-tokens", "2"]
    result = run(["eval", "--adapter", str(adapter_dir), *common, "--out", str(records)])
    assert result.exit_code == 0, result.output
    assert f"next: mlx-plamo export --adapter {adapter_dir} --results {records}" in result.output
    assert f"or: mlx-plamo report --results {records.parent}" in result.output
    scored = run(["score", str(records)])
    assert f"next: mlx-plamo report --results {records.parent}" in scored.output
    peft = tmp_path / "peft"
    exported = run(
        ["export", "--adapter", str(adapter_dir), "--out", str(peft), "--results", str(records)]
    )
    assert exported.exit_code == 0, exported.output
    assert (
        "next: mlx-plamo check-torch --base pfnet/plamo-3-nict-2b-base "
        f"--adapter {peft} --results {records}"
    ) in exported.output
    report = run(
        [
            "report",
            "--results",
            str(records.parent),
            "--out",
            str(tmp_path / "report"),
            "--no-mlflow",
        ]
    )
    assert report.exit_code == 0, report.output
    assert f"next: open {tmp_path / 'report' / 'index.html'}" in report.output


# ---- 7. the second audit: outputs the user owns, empty inputs, half-recorded files ------------


def test_check_torch_refuses_to_write_its_report_over_the_records(checked, tiny_hf_dir):
    before = checked["lora"].read_bytes()
    result = check_torch(checked, tiny_hf_dir, "--out", str(checked["lora"]))
    one_line_error(result, "--results file")
    assert checked["lora"].read_bytes() == before


def test_check_torch_replaces_its_own_report_but_no_other_file(checked, tiny_hf_dir, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text('{"mine": 1}')
    one_line_error(check_torch(checked, tiny_hf_dir, "--out", str(mine)), str(mine))
    assert mine.read_text() == '{"mine": 1}'
    report = tmp_path / "report.json"
    for _ in range(2):  # the second run replaces the first one's report
        result = check_torch(checked, tiny_hf_dir, "--limit", "1", "--out", str(report))
        assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["n"] == 1


def test_report_refuses_a_folder_holding_the_users_files(checked, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "base.json").write_bytes(checked["base"].read_bytes())
    out = tmp_path / "mine"
    (out / "figures").mkdir(parents=True)
    (out / "index.html").write_text("my page")
    (out / "figures" / "training_loss.png").write_bytes(b"my figure")
    args = ["report", "--results", str(results), "--no-mlflow", "--out", str(out)]
    one_line_error(run(args), str(out), "index.html")
    assert (out / "index.html").read_text() == "my page"
    assert (out / "figures" / "training_loss.png").read_bytes() == b"my figure"
    report = tmp_path / "report"
    for _ in range(2):  # an earlier report is replaced
        result = run([*args[:-1], str(report)])
        assert result.exit_code == 0, result.output
    (report / "notes.txt").write_text("mine")
    one_line_error(run([*args[:-1], str(report)]), "notes.txt")
    assert (report / "notes.txt").read_text() == "mine"


def test_eval_force_replaces_only_a_records_file(tiny_mlx_dir, tmp_path):
    data = toy_dataset(tmp_path / "data")
    dataset_file = data / "eval.jsonl"
    before = dataset_file.read_bytes()
    args = ["eval", "--condition", "base", "--model", str(tiny_mlx_dir), "--data", str(data)]
    result = run([*args, "--max-new-tokens", "2", "--out", str(dataset_file), "--force"])
    one_line_error(result, str(dataset_file), "not an eval records file")
    assert dataset_file.read_bytes() == before


def test_train_overwrite_removes_only_what_training_wrote(tmp_path):
    from train.checkpoints import prepare_adapter_dir

    adapter = tmp_path / "adapter"
    (adapter / "checkpoints" / "step-000011").mkdir(parents=True)
    (adapter / "checkpoints" / "step-000011" / "trainer_state.json").write_text("{}")
    (adapter / "evals").mkdir()
    (adapter / "evals" / "step-000011.json").write_text("{}")
    (adapter / "adapters.safetensors").write_bytes(b"weights")
    kept = [adapter / "checkpoints" / "mine.txt", adapter / "evals" / "notes.md", adapter / "a"]
    for path in kept:
        path.write_text("mine")
    prepare_adapter_dir(adapter, overwrite=True, resume=False)
    assert all(path.read_text() == "mine" for path in kept)
    assert sorted(p.name for p in (adapter / "checkpoints").iterdir()) == ["mine.txt"]
    assert sorted(p.name for p in (adapter / "evals").iterdir()) == ["notes.md"]
    assert not (adapter / "adapters.safetensors").exists()


def test_export_warns_when_records_come_from_another_adapter(checked, adapter_dir, tmp_path):
    records = json.loads(checked["lora"].read_text())
    records["summary"]["adapter"] = str(tmp_path / "another-adapter")
    other = tmp_path / "other.json"
    other.write_text(json.dumps(records))
    out = tmp_path / "peft"
    result = run(
        ["export", "--adapter", str(adapter_dir), "--out", str(out), "--results", str(other)]
    )
    assert result.exit_code == 0, result.output
    assert f"warning: {other} was made with the adapter {tmp_path / 'another-adapter'}" in (
        result.output
    )
    mine = run(
        [
            "export",
            "--adapter",
            str(adapter_dir),
            "--out",
            str(tmp_path / "p2"),
            "--results",
            str(checked["lora"]),
        ]
    )
    assert mine.exit_code == 0 and "warning" not in mine.output, mine.output


def test_bfcl_categories_run_once_each_and_an_empty_list_is_refused(tiny_mlx_dir, tmp_path):
    args = ["eval", "--suite", "bfcl", "--condition", "base", "--model", str(tiny_mlx_dir)]
    args += ["--data", str(toy_dataset(tmp_path / "data")), "--per-category", "1"]
    out = tmp_path / "bfcl.json"
    twice = "simple_python,simple_python"
    result = run([*args, "--categories", twice, "--max-new-tokens", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())["rows"]) == 1
    one_line_error(run([*args, "--categories", " , "]), "names no category")


def test_empty_inputs_are_errors_not_empty_successes(tiny_mlx_dir, checked, tiny_hf_dir, tmp_path):
    data = toy_dataset(tmp_path / "data", eval_rows=0)
    args = ["eval", "--condition", "base", "--model", str(tiny_mlx_dir), "--data", str(data)]
    one_line_error(run(args), str(data / "eval.jsonl"), "no questions")
    one_line_error(run(["data", "check-leak", str(data), str(data)]), "holds no rows")
    records = json.loads(checked["lora"].read_text())
    records["rows"] = []
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(records))
    one_line_error(check_torch(checked, tiny_hf_dir, records=empty), str(empty), "no questions")


def test_compare_refuses_a_file_where_only_some_rows_record_their_question(checked, tmp_path):
    records = json.loads(checked["lora"].read_text())
    records["rows"] = records["rows"][::-1]
    del records["rows"][1]["question"]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(records))
    result = run(["eval", "--compare", str(checked["lora"]), str(edited)])
    one_line_error(result, "row 1 has no 'question'")


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [("--lora-alpha", "0", "lora_alpha must be > 0"), ("--seed", "-1", "seed must be >= 0")],
)
def test_train_refuses_an_alpha_that_trains_nothing_and_a_negative_seed(
    tiny_mlx_dir, tmp_path, option, value, needle
):
    data = toy_dataset(tmp_path / "data")
    args = ["train", "--model", str(tiny_mlx_dir), "--data", str(data), option, value]
    one_line_error(run(args), needle)


def test_eval_label_must_not_be_a_path(tiny_mlx_dir, tmp_path):
    args = ["eval", "--condition", "base", "--model", str(tiny_mlx_dir), "--label", "../escape"]
    one_line_error(run(args), "plain name")
    assert not (tmp_path / "escape.json").exists()


def test_eval_data_needs_only_an_eval_file(tiny_mlx_dir, tmp_path):
    data = toy_dataset(tmp_path / "data")
    (data / "train.jsonl").unlink()
    args = ["eval", "--condition", "base", "--model", str(tiny_mlx_dir), "--max-new-tokens", "2"]
    result = run([*args, "--data", str(data), "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    one_line_error(run([*args, "--data", str(data / "eval.jsonl")]), "pass the dataset directory")
    (data / "eval.jsonl").unlink()
    one_line_error(run([*args, "--data", str(data)]), "eval.jsonl missing")


def test_eval_rows_with_bad_tools_are_refused_before_generating(tiny_mlx_dir, tmp_path):
    data = toy_dataset(tmp_path / "data")
    row = json.loads((data / "eval.jsonl").read_text())
    (data / "eval.jsonl").write_text(json.dumps({**row, "tools": "x"}) + "\n")
    args = ["eval", "--condition", "base", "--model", str(tiny_mlx_dir), "--data", str(data)]
    one_line_error(run(args), f"{data / 'eval.jsonl'}:1", "'tools'")


def test_data_build_with_no_examples_asked_says_so(tmp_path):
    source = (
        Path(__file__).parents[1] / "data" / "samples" / "glaive-function-calling-v2.sample.jsonl"
    )
    out = tmp_path / "d"
    args = ["data", "build", "--recipe", "v2", "--source", str(source), "--out", str(out)]
    result = run([*args, "--n-call", "0", "--n-nocall", "0", "--quiet"])
    assert "--n-call and --n-nocall are 0" in result.output, result.output


def test_train_resume_refuses_an_adapter_without_a_checkpoint(tmp_path):
    from train.checkpoints import CheckpointError, prepare_adapter_dir

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapters.safetensors").write_bytes(b"weights")
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        prepare_adapter_dir(adapter, overwrite=False, resume=True)
    assert (adapter / "adapters.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("damaged", ["adapters.safetensors", "optimizer.safetensors"])
def test_a_damaged_checkpoint_is_named_not_a_traceback(tmp_path, damaged):
    from train.checkpoints import CheckpointError, load_checkpoint

    step = tmp_path / "checkpoints" / "step-000010"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text('{"step": 10}')
    for name in ("adapters.safetensors", "optimizer.safetensors"):
        (step / name).write_bytes(b"" if name == damaged else b"not a safetensors file")
    with pytest.raises(CheckpointError, match=f"checkpoint {step} is damaged"):
        load_checkpoint(step, model=None, optimizer=None)


def test_an_output_moved_aside_by_a_killed_replace_is_put_back(tmp_path):
    from mlx_plamo3.io import atomic_directory, backup_path

    out = tmp_path / "out"
    with atomic_directory(out, "mlx-plamo test") as staging:
        (staging / "model.safetensors").write_text("first")
    os.replace(out, backup_path(out))  # killed between the two renames of a replace
    with atomic_directory(out, "mlx-plamo test", force=True) as staging:
        assert (out / "model.safetensors").read_text() == "first"  # back before any write
        (staging / "model.safetensors").write_text("second")
    assert (out / "model.safetensors").read_text() == "second"
    assert not backup_path(out).exists()


def test_check_torch_refuses_constrained_records_and_prompts_as_recorded(
    checked, tiny_hf_dir, tmp_path
):
    records = json.loads(checked["lora"].read_text())
    assert records["summary"]["decoding"]["fewshot"] is False
    records["summary"]["decoding"]["constrained"] = True
    constrained = tmp_path / "constrained.json"
    constrained.write_text(json.dumps(records))
    result = check_torch(checked, tiny_hf_dir, records=constrained)
    one_line_error(result, "eval --constrain")
    records["summary"]["decoding"] |= {"constrained": False, "fewshot": True}
    fewshot = tmp_path / "fewshot.json"
    fewshot.write_text(json.dumps(records))
    report = tmp_path / "report.json"
    check_torch(checked, tiny_hf_dir, "--limit", "1", "--out", str(report), records=fewshot)
    assert json.loads(report.read_text())["fewshot"] is True


def test_eval_quiet_leaves_out_the_progress_bar(tiny_mlx_dir, tmp_path):
    data = toy_dataset(tmp_path / "data")
    args = ["eval", "--condition", "base", "--model", str(tiny_mlx_dir), "--data", str(data)]
    args += ["--max-new-tokens", "2"]
    loud = run([*args, "--out", str(tmp_path / "a.json")])
    quiet = run([*args, "--out", str(tmp_path / "b.json"), "--quiet"])
    assert loud.exit_code == quiet.exit_code == 0, (loud.output, quiet.output)
    assert "eval base:" in loud.output and "eval base:" not in quiet.output
    assert "records written to" in quiet.output
