"""Recipe v3 (data/v3.py) on the bundled real rows (data/samples): every class is built from
them, v3 keeps v2's rows, the classes are counted, the leakage guard covers every new row, and
`data build --recipe v3 --call-format plamo` writes a dataset whose masks cover the markup."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

import data
from convert.tiny_vocab import write_tiny_tokenizer
from data.build import BuildConfig, build_dataset, plan_build
from data.call_format import BEGIN_TOOL_REQUESTS, JSON, PLAMO, parse_markup
from data.cli import data_group
from data.frozen import load_frozen_questions
from data.leakage import LeakageError, check_no_leak
from data.store import dataset_call_format, load_rows
from data.v3 import (
    DECLINE_BUILT,
    DECLINE_CLOSING,
    DECLINE_MIDDLE,
    DECLINE_MINED,
    DECLINE_OPENING,
    DEFERRED,
    TOOL_RESULT,
    is_decline,
)
from mlx_plamo3.tokenizer import Plamo3Tokenizer

SAMPLES = Path(data.__file__).parent / "samples"
GLAIVE = SAMPLES / "glaive-function-calling-v2.sample.jsonl"
DEMO = SAMPLES / "llamafactory_glaive_toolcall_en_demo.json"
# Small v2 part and tool-result share, so the 210 unique sample questions feed every class.
DEFERRED_TURNS = ["human", "gpt", "human", "function_call"]
SIZES = {"n_call": 20, "n_nocall": 4, "class_sizes": {TOOL_RESULT: 10}}


def v3_config(tmp_path: Path, call_format: str = PLAMO, **kwargs) -> BuildConfig:
    options = {"out": tmp_path / "v3", **SIZES, **kwargs}
    sources = (str(GLAIVE), str(DEMO))
    return BuildConfig("v3", sources, progress=False, call_format=call_format, **options)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory):
    return plan_build(v3_config(tmp_path_factory.mktemp("v3")))


def by_class(rows: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(row["class"], []).append(row)
    return found


def sample_texts() -> str:
    """Every string of the bundled rows, to find glaive's own phrasing in."""
    return GLAIVE.read_text(encoding="utf-8") + json.dumps(
        json.loads(DEMO.read_text(encoding="utf-8")), ensure_ascii=False
    )


def test_every_class_is_built_from_the_bundled_rows(plan) -> None:
    classes = by_class(plan.train.rows)
    for klass in (DECLINE_MINED, DECLINE_BUILT, DEFERRED, TOOL_RESULT):
        assert classes.get(klass), f"no {klass} rows"
    texts = sample_texts()
    for row in plan.train.rows:
        # every user turn is a real user turn of the samples
        for message in row["messages"]:
            if message["role"] == "user":
                assert json.dumps(message["content"], ensure_ascii=False)[1:-1] in texts

    for row in classes[DEFERRED]:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert "?" in row["messages"][2]["content"] and row["kind"] == "call"
        (call,) = parse_markup(row["messages"][4]["content"])
        assert call["name"] in {t["name"] for t in row["tools"]}

    for row in classes[TOOL_RESULT]:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant", "tool", "assistant"]
        assert parse_markup(row["messages"][2]["content"])
        assert BEGIN_TOOL_REQUESTS not in row["messages"][4]["content"]

    for row in classes[DECLINE_MINED]:
        last = row["messages"][-1]["content"]
        assert is_decline(last) and row["kind"] == "nocall" and row["tools"]
        assert json.dumps(last, ensure_ascii=False)[1:-1] in texts  # glaive's own reply

    frame = re.escape(DECLINE_OPENING) + ".+" + re.escape(DECLINE_MIDDLE) + ".+"
    for row in classes[DECLINE_BUILT]:
        (tool,) = row["tools"]
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert re.fullmatch(frame + re.escape(DECLINE_CLOSING), row["messages"][2]["content"])
        assert tool["name"] in row["messages"][0]["content"]
        assert row["kind"] == "nocall"


def test_the_built_declines_use_glaives_own_sentence_frame() -> None:
    """The frame is glaive's: real replies of the bundled rows use it word for word."""
    frame = re.compile(
        re.escape(DECLINE_OPENING) + "[^.]+" + re.escape(DECLINE_MIDDLE) + "[^.]+"
        + re.escape(DECLINE_CLOSING)
    )  # fmt: skip
    assert len(frame.findall(sample_texts())) >= 2


def test_v3_keeps_v2s_rows_and_counts_every_class(plan, tmp_path: Path) -> None:
    v2 = plan_build(
        BuildConfig(
            recipe="v2",
            sources=(str(GLAIVE), str(DEMO)),
            out=tmp_path / "v2",
            progress=False,
            call_format=PLAMO,
            n_call=SIZES["n_call"],
            n_nocall=SIZES["n_nocall"],
        )
    )
    v3_rows = [{k: v for k, v in row.items() if k != "class"} for row in plan.train.rows]
    for row in v2.train.rows:
        assert row in v3_rows
    train = plan.audit["train"]
    counts = Counter(row["class"] for row in plan.train.rows)
    assert train["classes"] == {k: counts[k] for k in train["classes"]}
    assert sum(train["classes"].values()) == len(plan.train.rows) == train["total"]
    for klass in (DECLINE_MINED, DEFERRED, TOOL_RESULT, DECLINE_BUILT):
        assert train["built"][klass] <= train["available"][klass]
    assert train["built"][TOOL_RESULT] == 10  # the option was honoured
    assert plan.audit["call_format"] == PLAMO


def test_json_format_v3_writes_the_studys_call_json(tmp_path: Path) -> None:
    rows = plan_build(v3_config(tmp_path, JSON)).train.rows
    calls = [m["content"] for r in rows for m in r["messages"] if m["content"].startswith('{"name')]
    assert calls and all(
        BEGIN_TOOL_REQUESTS not in m["content"] for r in rows for m in r["messages"]
    )
    assert all(set(json.loads(c)) == {"name", "arguments"} for c in calls)


def test_no_v3_row_holds_an_eval_question_in_any_user_turn(tmp_path: Path) -> None:
    """A conversation whose later user turn is an eval question never becomes a row."""
    demo = json.loads(DEMO.read_text(encoding="utf-8"))
    deferred = [
        row for row in demo if [t["from"] for t in row["conversations"][:4]] == DEFERRED_TURNS
    ]
    later = deferred[0]["conversations"][2]["value"]  # the user's answer, a later turn
    eval_path = tmp_path / "frozen.json"
    eval_path.write_text(
        json.dumps({"questions": [{"kind": "nocall", "question": later, "gold": "x"}]})
    )
    questions = load_frozen_questions(eval_path)
    plan = plan_build(v3_config(tmp_path, class_sizes={TOOL_RESULT: 10}), questions)
    users = [m["content"] for r in plan.train.rows for m in r["messages"] if m["role"] == "user"]
    assert later not in users
    # ...and the guard itself checks every user turn of a training row
    row = next(r for r in plan.train.rows if r["class"] == DEFERRED)
    with pytest.raises(LeakageError):
        check_no_leak(
            [row], [{"messages": [{"role": "user", "content": row["messages"][3]["content"]}]}]
        )


def test_data_build_v3_plamo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "v3"
    args = ["build", "--recipe", "v3", "--call-format", "plamo", "--source", GLAIVE]
    args += ["--source", DEMO, "--out", out, "--n-call", "20", "--n-nocall", "4"]
    args += ["--n-tool-result", "10", "--n-deferred", "5"]
    result = CliRunner().invoke(data_group, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    assert "calls written as plamo" in result.stdout
    assert "rows by class: call 20" in result.stdout and "deferred call 5" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["call_format"] == PLAMO and dataset_call_format(out) == PLAMO
    assert manifest["options"]["class_sizes"][DEFERRED] == 5
    audit = json.loads((out / "audit.json").read_text())
    assert audit["train"]["classes"][DEFERRED] == 5
    rows = load_rows(out / "train.jsonl")
    evaluation = load_rows(out / "eval.jsonl")
    assert len(evaluation) == 52
    # eval rows: the prompt's gold call in the markup, the gold kept in the study's JSON
    first_call = next(r for r in evaluation if r["kind"] == "call")
    assert parse_markup(first_call["messages"][2]["content"]) == [json.loads(first_call["gold"])]

    tok_dir = tmp_path / "tok"
    write_tiny_tokenizer(tok_dir)
    tokenizer = Plamo3Tokenizer.from_pretrained(tok_dir)
    tag = tokenizer.convert_tokens_to_ids("<|plamo:tag|>")
    for row in rows:
        ids, mask = tokenizer.assistant_token_mask(row["messages"])
        supervised = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
        turns = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert supervised == "".join(turn + "<|plamo:tag|>" for turn in turns)
        assert sum(t == tag for t, m in zip(ids, mask, strict=True) if m) == len(turns)

    # --n-* class options are v3's
    bad = CliRunner().invoke(data_group, ["build", "--recipe", "v2", "--n-deferred", "3"])
    assert bad.exit_code != 0 and "pass --recipe v3" in bad.output


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    first, _ = build_dataset(v3_config(tmp_path))
    texts = {p.name: p.read_bytes() for p in first.iterdir()}
    again, _ = build_dataset(v3_config(tmp_path, out=tmp_path / "again"))
    assert {p.name: p.read_bytes() for p in again.iterdir()} == texts
