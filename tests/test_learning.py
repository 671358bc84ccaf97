"""The trainer teaches: a few LoRA steps on the tiny model move greedy outputs toward the call
format on prompts it never saw. A broken loss mask, LoRA scale, chat template or stop token
can leave every parity test green and still stop learning; this test is what fails then.

The data is built with the same prompt and target code as the real datasets (`data.prompt`):
two tools, one question template each, 16 cities to train on and 4 held out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.call_format import call_text
from data.prompt import example_row, render_tools
from eval.harness import run_eval
from mlx_plamo3.loading import load
from mlx_plamo3.lora import load_adapter
from train.config import TrainConfig
from train.trainer import train

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Rome", "Quito", "Seoul", "Accra"]
CITIES += ["Hanoi", "Dakar", "Sofia", "Minsk", "Riga", "Doha", "Kyiv", "Baku", "Bern", "Lome"]
HELD_OUT = 4


def tool(name: str, what: str) -> dict:
    properties = {"city": {"type": "string", "description": "The city"}}
    parameters = {"type": "object", "properties": properties, "required": ["city"]}
    return {"name": name, "description": f"Get the {what} in a city", "parameters": parameters}


TOOLS = {
    "What time is it in": tool("get_time", "time"),
    "What is the weather in": tool("get_weather", "weather"),
}


def rows(cities: list[str]) -> list[dict]:
    out = []
    for city in cities:
        for question, spec in TOOLS.items():
            reply = call_text(spec["name"], {"city": city})
            out.append(
                example_row(render_tools([spec]), f"{question} {city}?", reply, "call", [spec])
            )
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("learning") / "data"
    directory.mkdir()
    for name, part in (("train", CITIES[:-HELD_OUT]), ("eval", CITIES[-HELD_OUT:])):
        lines = "".join(json.dumps(row) + "\n" for row in rows(part))
        (directory / f"{name}.jsonl").write_text(lines)
    return directory


def test_a_few_lora_steps_teach_the_call_format(tiny_mlx_dir, dataset, tmp_path):
    held_out = [json.loads(line) for line in (dataset / "eval.jsonl").read_text().splitlines()]
    model, tokenizer = load(tiny_mlx_dir)
    base = run_eval(model, tokenizer, held_out, "base", max_new_tokens=24)["summary"]

    config = TrainConfig(
        data=str(dataset),
        model=str(tiny_mlx_dir),
        adapter_path=str(tmp_path / "adapter"),
        dtype="float32",
        learning_rate=1e-2,
        epochs=3,
        checkpoint_eval=False,
        mlflow=False,
        progress=False,
    )
    result = train(config, log=lambda _: None)
    assert result.steps == 12  # 32 examples x 3 epochs / 8 per step
    assert result.history[-1].loss < result.history[0].loss / 3

    model, tokenizer = load(tiny_mlx_dir)
    load_adapter(model, tmp_path / "adapter")
    model.eval()
    lora = run_eval(model, tokenizer, held_out, "lora", max_new_tokens=24)
    summary = lora["summary"]
    # The random base never emits a call; after 12 steps the unseen prompts mostly get one.
    assert base["parse_rate"] == 0.0
    assert summary["parse_rate"] >= 0.5 and summary["func_name_acc"] >= 0.25
    starts = [row["pred"].startswith('{"name": "get_') for row in lora["rows"]]
    assert sum(starts) >= len(starts) - 1
