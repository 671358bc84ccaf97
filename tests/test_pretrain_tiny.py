"""The demo base's pretraining (`scripts/pretrain_tiny.py`) and its corpus vocabulary.

What the demo's claims rest on: the pretraining text never holds an eval question; its calls
are a shape the study's parse does not count (so the base scores 0 by construction, checked
with the eval's own scorer); tools are renamed and thinned consistently in the prompt and the
call; and the output is a checkpoint the HF reference and the converter load."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from convert.tiny import read_corpus_words, write_tiny_checkpoint
from convert.tiny_vocab import corpus_words
from data.leakage import LeakageError
from data.prompt import SYSTEM_PROMPT_PREFIX, example_row, render_tools
from eval.scoring import call_check, parse_prediction
from mlx_plamo3.tokenizer import Plamo3Tokenizer
from mlx_plamo3.torch_reference import load_reference
from scripts import pretrain_tiny as pt

SAMPLE = Path("data/samples/llamafactory_glaive_toolcall_en_demo.json")
SETTINGS = pt.Settings(
    copy_steps=2, copy_batch=2, copy_lr=1e-2, steps=2, batch=2, lr=1e-3, max_length=512,
    drop_parameters=0.5, drop_description=0.3, seed=0,
)  # fmt: skip

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city", "unit"],
    },
}


def sharegpt_row(question: str) -> dict:
    call = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}
    return {
        "conversations": [
            {"from": "human", "value": question},
            {"from": "function_call", "value": json.dumps(call)},
            {"from": "observation", "value": '{"temp": 3}'},
            {"from": "gpt", "value": "It is 3 degrees in Oslo."},
        ],
        "tools": json.dumps([WEATHER]),
    }


def eval_dir(tmp_path: Path, questions: list[str]) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    rows = [
        example_row(render_tools([WEATHER]), q, '{"name": "get_weather", "arguments": {}}', "call",
                    [WEATHER])
        for q in questions
    ]  # fmt: skip
    (directory / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def test_conversations_with_an_eval_question_are_dropped(tmp_path):
    source = tmp_path / "source.json"
    asked = "What is the weather in Oslo?"
    rows = [sharegpt_row("  what is the WEATHER in oslo? "), sharegpt_row("Weather in Rome?")]
    source.write_text(json.dumps(rows))
    found, dropped = pt.read_exchanges([str(source)], {" ".join(asked.split()).lower()})
    assert dropped == 1
    assert [e.user for e in found] == ["Weather in Rome?"]
    assert found[0].call == {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}


def test_a_source_without_calls_is_refused(tmp_path):
    source = tmp_path / "source.json"
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
           "tools": json.dumps([WEATHER])}  # fmt: skip
    source.write_text(json.dumps([row]))
    with pytest.raises(pt.InputError, match="no tool calls"):
        pt.read_exchanges([str(source)], set())


def test_pretraining_calls_are_not_calls_to_the_study_parse():
    found, _ = pt.read_exchanges([str(SAMPLE)], set())
    words = pt.name_words(found)
    rng = random.Random(1)
    calls = [e for e in found if e.call is not None][:60]
    assert len(calls) == 60
    for exchange in calls:
        reply = pt.varied_messages(exchange, rng, words, SETTINGS)[-1]["content"]
        assert parse_prediction(reply) is not None  # valid JSON ...
        assert call_check(parse_prediction(reply), "study") == "not_a_call"  # ... but no call


def test_renaming_and_dropping_agree_between_prompt_and_call():
    exchange = pt.Exchange(
        [WEATHER], "Use get_weather for Oslo", "",
        {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}},
    )  # fmt: skip
    words = (["fetch", "find"], ["alpha", "beta", "gamma"])
    always = dataclasses.replace(SETTINGS, drop_parameters=1.0, drop_description=1.0)
    seen_empty = False
    for seed in range(40):
        system, user, assistant = pt.varied_messages(exchange, random.Random(seed), words, always)
        tools_text = system["content"][len(SYSTEM_PROMPT_PREFIX) :]
        tool = json.loads(tools_text)
        call = json.loads(assistant["content"])["function_call"]
        head, *rest = tool["name"].split("_")
        assert head in words[0] and 1 <= len(rest) <= 2 and set(rest) <= set(words[1])
        assert call["name"] == tool["name"] and "get_weather" not in user["content"]
        assert tool["name"] in user["content"]
        assert tool["description"] == ""
        properties = tool["parameters"]["properties"]
        assert len(properties) < 2  # a proper subset is kept
        assert set(call["arguments"]) == set(properties) == set(tool["parameters"]["required"])
        seen_empty |= call["arguments"] == {}
    assert seen_empty
    assert WEATHER["name"] == "get_weather" and len(WEATHER["parameters"]["properties"]) == 2


def test_copy_rows_repeat_their_span_and_mask_the_repeats():
    gen = torch.Generator().manual_seed(0)
    rows, masks = pt.copy_rows(8, list(range(100, 400)), 1, gen)
    assert rows.shape == (8, pt.COPY_ROW_LENGTH + 1) and masks.shape == (8, pt.COPY_ROW_LENGTH)
    for row, mask in zip(rows.tolist(), masks.tolist(), strict=True):
        assert row[0] == 1
        period = mask.index(True)
        assert pt.PERIODS[0] <= period <= pt.PERIODS[1] and all(mask[period:])
        body = row[1:]
        assert all(body[i] == body[i - period] for i in range(period, len(body)))


def test_corpus_words_count_words_in_every_string():
    values = [{"text": "poem poem color", "tools": ["poem_color", {"poem": "dog"}]}, "dog"]
    assert [w for w, _ in corpus_words(values, 10)] == ["poem", "color", "dog"]
    assert [w for w, _ in corpus_words(values, 1)] == ["poem"]


def test_a_corpus_vocabulary_makes_corpus_words_single_pieces(tmp_path):
    plain = write_tiny_checkpoint(tmp_path / "plain")
    corpus = read_corpus_words(SAMPLE, 1500)
    rich = write_tiny_checkpoint(tmp_path / "rich", corpus=corpus)
    plain_tok, rich_tok = (Plamo3Tokenizer.from_pretrained(d) for d in (plain, rich))
    config = json.loads((rich / "config.json").read_text())
    assert config["vocab_size"] == len(rich_tok) > len(plain_tok) + 1500
    assert len(plain_tok.encode(" internet", add_special_tokens=False)) > 1
    assert len(rich_tok.encode(" internet", add_special_tokens=False)) == 1
    # The built-in pieces keep their ids, so the chat template's control ids are unchanged.
    assert rich_tok.encode("<|plamo:tag|>", add_special_tokens=False) == [16]


def test_a_corpus_file_without_repeated_words_is_refused(tmp_path):
    lonely = tmp_path / "lonely.jsonl"
    lonely.write_text('{"a": "one two"}\n')
    with pytest.raises(pt.InputError, match="no word occurs"):
        read_corpus_words(lonely, 10)


def test_the_command_writes_a_loadable_checkpoint_and_its_record(tmp_path):
    model = write_tiny_checkpoint(tmp_path / "tiny", corpus=read_corpus_words(SAMPLE, 200))
    data = eval_dir(tmp_path, ["What is the weather in Oslo?"])
    out = tmp_path / "base"
    args = ["--model", str(model), "--data", str(data), "--out", str(out), "--copy-steps", "2",
            "--steps", "2", "--batch", "2", "--copy-batch", "2"]  # fmt: skip
    result = CliRunner().invoke(pt.main, args)
    assert result.exit_code == 0, result.output
    assert "next: python -m convert" in result.output
    record = json.loads((out / pt.RECORD_FILE).read_text())
    assert record["copy"]["steps"] == 2 and record["exchanges"]["calls"] == 211
    before, after = load_reference(model).state_dict(), load_reference(out).state_dict()
    assert before.keys() == after.keys()
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    for name in ("tokenizer.jsonl", "config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (model / name).read_bytes()
    again = CliRunner().invoke(pt.main, args)
    assert again.exit_code != 0 and "--force" in again.output


def test_an_eval_question_in_the_pretraining_text_is_caught(tmp_path, monkeypatch):
    # The second guard: even if the conversation filter missed one, check_no_leak refuses.
    monkeypatch.setattr(pt, "normalise_query", lambda text: text)
    source = tmp_path / "source.json"
    source.write_text(json.dumps([sharegpt_row("what is the weather in oslo?")]))
    model = write_tiny_checkpoint(tmp_path / "tiny", corpus=read_corpus_words(SAMPLE, 200))
    data = eval_dir(tmp_path, ["What is the weather in Oslo?"])
    with pytest.raises(LeakageError):
        pt.pretrain(model, str(data), [str(source)], tmp_path / "out", SETTINGS, force=False)


def test_a_max_length_no_row_fits_is_an_error_not_a_hang(tmp_path):
    model = write_tiny_checkpoint(tmp_path / "tiny", corpus=read_corpus_words(SAMPLE, 200))
    data = eval_dir(tmp_path, ["What is the weather in Oslo?"])
    short = dataclasses.replace(SETTINGS, max_length=16, copy_steps=0)
    with pytest.raises(pt.InputError, match="--max-length 16"):
        pt.pretrain(model, str(data), [str(SAMPLE)], tmp_path / "out", short, force=False)
    assert not (tmp_path / "out").exists()
