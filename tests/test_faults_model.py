"""Bad model configs, seeds, chat files and serve addresses, as a user meets them: through the
command line (or HTTP for serve), each a one-line error naming the file and key, or the option,
never a traceback."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner
from lora_helpers import make_random_adapter
from test_serve import MODEL_NAME, free_port, serving

from commands import serve
from commands.main import main as cli_main
from mlx_plamo3.loading import load
from mlx_plamo3.model import VALUE_RULES, ModelArgs


def run(args: list[str]):
    return CliRunner().invoke(cli_main, args)


def one_line_error(result, *needles: str) -> None:
    """Failed with click's one 'Error: ...' line holding every needle, and no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, result.output)


def with_config(model_dir: Path, out: Path, change) -> Path:
    """A copy of `model_dir` whose config.json is `change(config)`."""
    shutil.copytree(model_dir, out)
    config = json.loads((model_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(change(config)))
    return out


def set_key(key: str, value):
    return lambda config: {**config, key: value}


@pytest.fixture(scope="module")
def adapter_dir(tiny_mlx_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    make_random_adapter(tiny_mlx_dir, out)
    return out


@pytest.fixture
def eval_data(tmp_path) -> Path:
    answer = json.dumps({"name": "get_time", "arguments": {"city": "Oslo"}})
    row = {
        "messages": [
            {"role": "system", "content": 'Tools:\n{"name": "get_time"}'},
            {"role": "user", "content": "Time in Oslo?"},
            {"role": "assistant", "content": answer},
        ],
        "kind": "call",
        "gold": answer,
    }
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "eval.jsonl"):
        (data / name).write_text(json.dumps(row) + "\n")
    return data


# ---- 1. a model config.json of the wrong shape ------------------------------------------------


COMMANDS_READING_CONFIG = [
    "generate",
    "eval",
    "train-plan",
    "convert",
    "export-fused",
]


def command_args(command: str, model: Path, tmp_path: Path, data: Path, adapter: Path):
    """The command line of `command` run on `model`."""
    model_and_data = ["--model", str(model), "--data", str(data)]
    return {
        "generate": ["generate", "--model", str(model), "--prompt", "hi"],
        "eval": ["eval", "--condition", "base", *model_and_data, "--out", str(tmp_path / "r")],
        "train-plan": ["train", "--plan", *model_and_data],
        "convert": ["convert", "--hf-path", str(model), "--mlx-path", str(tmp_path / "out")],
        "export-fused": [
            "export",
            "--adapter",
            str(adapter),
            "--out",
            str(tmp_path / "peft"),
            "--fused",
            "--base",
            str(model),
        ],
    }[command]


@pytest.mark.parametrize("command", COMMANDS_READING_CONFIG)
def test_a_string_size_in_config_json_is_named_by_every_command(
    command, tiny_mlx_dir, adapter_dir, eval_data, tmp_path
):
    bad = with_config(tiny_mlx_dir, tmp_path / "bad", set_key("hidden_size", "64"))
    result = run(command_args(command, bad, tmp_path, eval_data, adapter_dir))
    one_line_error(
        result, f'{bad / "config.json"}: hidden_size must be a positive integer, got "64"'
    )


@pytest.mark.parametrize("command", ["generate", "convert", "train-plan"])
def test_a_config_json_that_is_not_an_object_is_named(command, tiny_mlx_dir, eval_data, tmp_path):
    bad = with_config(tiny_mlx_dir, tmp_path / "bad", lambda config: [1])
    result = run(command_args(command, bad, tmp_path, eval_data, tmp_path))
    one_line_error(result, str(bad / "config.json"), "JSON object")


def test_a_negative_vocab_size_is_refused_before_any_plan(tiny_mlx_dir, eval_data, tmp_path):
    bad = with_config(tiny_mlx_dir, tmp_path / "bad", set_key("vocab_size", -5))
    result = run(["train", "--plan", "--model", str(bad), "--data", str(eval_data)])
    one_line_error(result, str(bad), "vocab_size must be a positive integer, got -5")
    assert "peak" not in result.output.lower()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("num_hidden_layers", True, "a positive integer, got true"),
        ("head_dim", 16.0, "a positive integer, got 16.0"),
        ("rms_norm_eps", "1e-6", 'a positive number, got "1e-6"'),
        ("rope_theta", 1, "a number above 1, got 1"),
        ("tie_word_embeddings", 1, "true or false, got 1"),
        ("eos_token_id", [2, -1], "a token id, a list of them, or null, got [2, -1]"),
        ("quantization", {"bits": 4}, "null or an object with positive integers group_size"),
    ],
)
def test_a_config_value_of_the_wrong_type_or_range_names_the_key(
    key, value, expected, tiny_mlx_dir, tmp_path
):
    bad = with_config(tiny_mlx_dir, tmp_path / "bad", set_key(key, value))
    result = run(["generate", "--model", str(bad), "--prompt", "hi"])
    one_line_error(result, f"{bad / 'config.json'}: {key} must be {expected}")


def test_head_counts_that_do_not_divide_are_named(tiny_mlx_dir, tmp_path):
    bad = with_config(tiny_mlx_dir, tmp_path / "bad", set_key("num_key_value_heads", 3))
    result = run(["generate", "--model", str(bad), "--prompt", "hi"])
    one_line_error(result, str(bad / "config.json"), "num_key_value_heads (3)")


def test_every_model_arg_is_checked_by_a_value_rule():
    # model_type is checked by from_dict before anything else.
    assert set(VALUE_RULES) == {f.name for f in fields(ModelArgs)} - {"model_type"}


def test_the_torch_reference_loader_checks_config_json_the_same_way(tiny_hf_dir, tmp_path):
    torch_reference = pytest.importorskip("mlx_plamo3.torch_reference")
    bad = with_config(tiny_hf_dir, tmp_path / "bad", set_key("hidden_size", "64"))
    with pytest.raises(ValueError, match=r"config\.json: hidden_size must be a positive integer"):
        torch_reference.load_reference(bad)


# ---- 2. seeds outside what the random generators take -----------------------------------------


def test_tiny_refuses_a_negative_seed(tmp_path):
    result = run(["tiny", str(tmp_path / "t"), "--seed", "-1"])
    assert result.exit_code == 2 and "--seed" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "t").exists()


def test_generate_refuses_a_negative_seed(tiny_mlx_dir):
    args = ["generate", "--model", str(tiny_mlx_dir), "--prompt", "hi", "--temperature", "1"]
    result = run([*args, "--seed", "-1"])
    assert result.exit_code == 2 and "--seed" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def served_url(tiny_mlx_dir):
    model, tokenizer = load(tiny_mlx_dir)
    with serving(serve.create_app(model, tokenizer, MODEL_NAME)) as url:
        yield url


def post_chat(url: str, **fields) -> tuple[int, dict]:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}], **fields}
    request = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("seed", [-1, 2**64, 2**70])
def test_serve_answers_400_for_a_seed_mx_random_key_does_not_take(served_url, seed):
    status, body = post_chat(served_url, seed=seed, temperature=1.0, max_tokens=2)
    assert status == 400, body
    assert body["error"]["param"] == "seed" and "seed" in body["error"]["message"]


def test_serve_samples_with_the_largest_seed_mx_random_key_takes(served_url):
    status, body = post_chat(served_url, seed=2**64 - 1, temperature=1.0, max_tokens=2)
    assert status == 200, body


# ---- 3. a chat file with a role the template does not know ------------------------------------


def test_generate_names_the_file_and_index_of_a_message_with_an_unknown_role(
    tiny_mlx_dir, tmp_path
):
    chat = tmp_path / "chat.json"
    chat.write_text(
        json.dumps([{"role": "user", "content": "hi"}, {"role": "wizard", "content": "hi"}])
    )
    result = run(["generate", "--model", str(tiny_mlx_dir), "--messages", str(chat)])
    one_line_error(result, str(chat), "message 1", "wizard")


# ---- 4. options that cannot work together, an address in use ----------------------------------


def test_generate_refuses_raw_with_messages(tiny_mlx_dir, tmp_path):
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "user", "content": "hi"}]))
    args = ["generate", "--model", str(tiny_mlx_dir), "--messages", str(chat), "--raw"]
    result = run(args)
    assert result.exit_code == 2 and "--raw" in result.output, result.output
    assert "Traceback" not in result.output


def test_serve_on_a_busy_port_is_one_line_before_it_says_it_is_serving(tiny_mlx_dir, monkeypatch):
    started = []
    monkeypatch.setattr(serve.uvicorn, "run", lambda app, **_: started.append(app))
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        result = CliRunner().invoke(
            serve.serve_command, ["--model", str(tiny_mlx_dir), "--port", str(port)]
        )
    one_line_error(result, f"127.0.0.1:{port}")
    assert "serving" not in result.output and "next:" not in result.output
    assert not started
