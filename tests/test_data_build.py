"""Recipes, the frozen eval, the audit and the written build, on the bundled real rows
(data/samples) plus rows written here for the frozen eval and for edge cases."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

import data
from data import SYSTEM_PROMPT_PREFIX, build_system_prompt, load_rows
from data.build import BuildConfig, FrozenEvalError, build_dataset, plan_build
from data.frozen import load_frozen_questions, synthesize_tool
from data.leakage import LeakageError, normalise_query
from data.schema import ToolCall
from mlx_plamo3.io import OUTPUT_MARKER

SAMPLES = Path(data.__file__).parent / "samples"
GLAIVE = SAMPLES / "glaive-function-calling-v2.sample.jsonl"
DEMO = SAMPLES / "llamafactory_glaive_toolcall_en_demo.json"
SEED_RESULTS = Path(__file__).parent / "fixtures" / "seed-results"  # copied from ../shared

# The seed's system prompt, copied by hand from GUIDE.md section 1.
SEED_PROMPT = (
    "You are a helpful assistant with access to the following tools. When the user's request "
    'requires a tool, respond with ONLY a JSON object {"name": <function-name>, "arguments": '
    "<args-object>}. If no tool is needed, answer normally.\nTools:\n"
)
# Hand-read labels of the 13 glaive sample rows (see test_data_glaive.py).
GLAIVE_LABELS = Counter(call=7, deferred_call=3, strict_nocall=2, no_tools=1)

SPORTS_Q = "Hi, can you tell me the latest sports scores?"  # a frozen call question
PIZZA_Q = "Can you order pizza for me?"  # a frozen strict no-call question
TOOLS_HEAD = (
    "SYSTEM: You are a helpful assistant with access to the following functions. "
    "Use them if required -\n"
)


def config(tmp_path: Path, *sources: Path, **kwargs: object) -> BuildConfig:
    kwargs.setdefault("recipe", "v2")
    kwargs.setdefault("out", tmp_path / "out")
    return BuildConfig(sources=tuple(str(s) for s in sources), progress=False, **kwargs)


def glaive_tool(name: str) -> str:
    schema = {"name": name, "description": "d", "parameters": {"type": "object", "properties": {}}}
    return json.dumps(schema, indent=4)


def glaive_row(query: str, reply: str, *tool_names: str) -> dict:
    return {
        "system": TOOLS_HEAD + "\n\n".join(glaive_tool(n) for n in tool_names) + "\n",
        "chat": f"USER: {query}\n\n\nASSISTANT: {reply} <|endoftext|>\n\n\n",
    }


def call(name: str) -> str:
    return f'<functioncall> {{"name": "{name}", "arguments": \'{{}}\'}}'


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def edge_source(tmp_path: Path) -> Path:
    """The 13 glaive rows, then: 2 malformed rows, 2 duplicates, 3 rows of frozen questions."""
    rows = [json.loads(line) for line in GLAIVE.read_text(encoding="utf-8").splitlines()]
    rows += [
        {"system": TOOLS_HEAD + "{broken", "chat": "USER: a\n\nASSISTANT: b"},  # bad_tool_json
        glaive_row("q", '<functioncall> {"name": "f", "arguments": \'{x}\'}', "f"),  # bad call
        # duplicates of sample rows 6 and 9, differing only in case and whitespace
        glaive_row(
            "hi,  I JUST bought a new laptop for $1500. Can you help me calculate how "
            "much sales tax I would have to pay if the tax rate is 7%?",
            "ok",
            "x",
        ),
        glaive_row("Can you please order a pizza for me from DOMINO'S?", "no", "y"),
        # a frozen call question, first without its gold tool, then with it
        glaive_row(SPORTS_Q.upper(), "Which sport?", "get_weather"),
        glaive_row(SPORTS_Q, call("get_sports_scores"), "get_weather", "get_sports_scores"),
        # a frozen strict no-call question
        glaive_row(PIZZA_Q, "I'm sorry, I can't order pizza.", "get_random_fact"),
    ]
    return write_jsonl(tmp_path / "edge.jsonl", rows)


def test_v2_on_the_glaive_sample_counts_and_rows(tmp_path: Path) -> None:
    plan = plan_build(config(tmp_path, GLAIVE))
    audit = plan.audit
    assert audit["rows"] == {
        "source": 13,
        "parsed": 13,
        "skipped_total": 0,
        "skipped": {},
        "skipped_examples": {},
        "duplicates_removed": 0,
        "unique_queries": 13,
    }
    assert Counter(audit["labels"]) == GLAIVE_LABELS
    assert audit["train"]["built"] == {"call": 7, "nocall": 2}
    assert audit["train"]["available"] == {"call": 7, "nocall": 2}
    # asked for the defaults (1,400 + 318): capped with a warning
    assert audit["train"]["requested"] == {"call": 1400, "nocall": 318}
    assert any("asked for 1,400 call examples" in w for w in plan.warnings)

    by_query = {r["messages"][1]["content"]: r for r in plan.train.rows}
    factorial = by_query["Hi, I need to calculate the factorial of 5. Can you help me with that?"]
    assert factorial["kind"] == "call"
    assert factorial["messages"][2]["content"] == (
        '{"name": "calculate_factorial", "arguments": {"number": 5}}'
    )
    raw_system = json.loads(GLAIVE.read_text(encoding="utf-8").splitlines()[5])["system"]
    assert factorial["messages"][0]["content"] == (
        SEED_PROMPT + raw_system.split("Use them if required -")[1].strip()
    )
    assert [t["name"] for t in factorial["tools"]] == ["calculate_factorial"]
    pizza = by_query["Can you please order a pizza for me?"]
    assert pizza["kind"] == "nocall"
    assert pizza["messages"][2]["content"].startswith("I'm sorry, but I'm unable to perform")
    # v2 never trains on a deferred call's first reply
    assert "Of course, I can help with that. Please provide me with the text." not in {
        r["messages"][2]["content"] for r in plan.train.rows
    }


def test_v1_keeps_the_naive_labels_and_reports_the_deferred_share(tmp_path: Path) -> None:
    plan = plan_build(config(tmp_path, GLAIVE, recipe="v1"))
    train = plan.audit["train"]
    # 7 first-reply calls; the naive no-call class is 3 deferred calls + 2 strict no-calls.
    assert train["built"] == {"call": 7, "nocall": 5}
    assert train["nocall_labels"] == {"deferred_call": 3, "strict_nocall": 2}
    assert train["nocall_deferred_share"] == 0.6
    assert plan.audit["naive_nocall"]["deferred_share"] == 0.6
    replies = {r["messages"][2]["content"] for r in plan.train.rows if r["kind"] == "nocall"}
    assert "Sure, I can help with that. Let me calculate it for you." in replies  # sample row 4


def test_sizes_are_configurable_and_seeded(tmp_path: Path) -> None:
    def drawn(seed: int) -> list[str]:
        plan = plan_build(config(tmp_path, GLAIVE, n_call=3, n_nocall=1, seed=seed))
        assert plan.audit["train"]["built"] == {"call": 3, "nocall": 1}
        assert not plan.warnings[1:]  # only the frozen-eval warning: nothing was capped
        return [r["messages"][1]["content"] for r in plan.train.rows]

    assert drawn(5) == drawn(5)
    assert len({tuple(drawn(seed)) for seed in range(6)}) > 1


def test_edge_source_skips_dedups_and_rebuilds_frozen_questions(tmp_path: Path) -> None:
    plan = plan_build(config(tmp_path, edge_source(tmp_path)))
    rows = plan.audit["rows"]
    assert rows["source"] == 20 and rows["parsed"] == 18
    assert rows["skipped"] == {"bad_call_json": 1, "bad_tool_json": 1}
    assert re.search(r"edge\.jsonl row 14: ", rows["skipped_examples"]["bad_tool_json"][0])
    # two case/whitespace variants of sample rows, and SPORTS_Q twice
    assert rows["duplicates_removed"] == 3
    assert rows["unique_queries"] == 15

    frozen = plan.audit["frozen_eval"]
    assert (frozen["from_source"], frozen["synthesized"], frozen["missing"]) == (2, 39, 11)
    assert SPORTS_Q not in frozen["not_in_source"] and PIZZA_Q not in frozen["not_in_source"]
    by_question = {r["messages"][1]["content"]: r for r in plan.eval_rows}
    sports = by_question[SPORTS_Q]
    # the duplicate that lists the gold tool wins over the earlier one that does not
    assert sports["tools_source"] == "source"
    assert [t["name"] for t in sports["tools"]] == ["get_weather", "get_sports_scores"]
    assert sports["messages"][0]["content"] == build_system_prompt(
        glaive_tool("get_weather") + "\n\n" + glaive_tool("get_sports_scores")
    )
    assert by_question[PIZZA_Q]["tools_source"] == "source"
    assert [t["name"] for t in by_question[PIZZA_Q]["tools"]] == ["get_random_fact"]

    # frozen questions never reach training, though they are valid call/no-call rows
    train_keys = {normalise_query(r["messages"][1]["content"]) for r in plan.train.rows}
    assert normalise_query(SPORTS_Q) not in train_keys
    assert normalise_query(PIZZA_Q) not in train_keys
    assert plan.audit["train"]["built"] == {"call": 7, "nocall": 2}


def test_frozen_eval_always_has_the_52_seed_questions(tmp_path: Path) -> None:
    plan = plan_build(config(tmp_path, GLAIVE))
    questions = load_frozen_questions()
    assert len(plan.eval_rows) == 52
    assert [r["kind"] for r in plan.eval_rows] == ["call"] * 40 + ["nocall"] * 12
    for row, question in zip(plan.eval_rows, questions, strict=True):
        assert row["messages"][1]["content"] == question.question
        assert row["gold"] == row["messages"][2]["content"] == question.gold
        assert row["messages"][0]["content"].startswith(SYSTEM_PROMPT_PREFIX)
    assert {r["tools_source"] for r in plan.eval_rows[:40]} == {"synthesized"}
    assert {r["tools_source"] for r in plan.eval_rows[40:]} == {"missing"}
    assert all(r["tools"] == [] for r in plan.eval_rows[40:])
    assert "52 of 52 frozen eval questions are not in the source" in plan.warnings[0]


def test_synthesized_tool_from_a_gold_call() -> None:
    mortgage = ToolCall(
        "calculate_mortgage_payment", {"loan_amount": 200000, "interest_rate": 3.5, "loan_term": 30}
    )
    assert synthesize_tool(mortgage) == {
        "name": "calculate_mortgage_payment",
        "description": "",
        "parameters": {
            "type": "object",
            "properties": {
                "loan_amount": {"type": "integer"},
                "interest_rate": {"type": "number"},
                "loan_term": {"type": "integer"},
            },
            "required": ["loan_amount", "interest_rate", "loan_term"],
        },
    }
    program = ToolCall("execute_program", {"program": "p.py", "arguments": ["a", "b"], "x": True})
    properties = synthesize_tool(program)["parameters"]["properties"]
    assert properties["arguments"] == {"type": "array", "items": {"type": "string"}}
    assert properties["x"] == {"type": "boolean"}


def test_require_frozen_eval_fails_before_writing(tmp_path: Path) -> None:
    with pytest.raises(FrozenEvalError, match="52 of 52 frozen eval questions"):
        build_dataset(config(tmp_path, GLAIVE, require_frozen_eval=True))
    assert not (tmp_path / "out").exists()


def test_build_refuses_to_write_a_leaking_train_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import data.build as build_module

    real = build_module.train_examples

    def leaky(*args: object, **kwargs: object):
        result = real(*args, **kwargs)
        leaked = dict(result.rows[0])
        leaked["messages"] = [dict(m) for m in leaked["messages"]]
        leaked["messages"][1]["content"] = "  " + PIZZA_Q.upper()
        result.rows.append(leaked)
        return result

    monkeypatch.setattr(build_module, "train_examples", leaky)
    with pytest.raises(LeakageError) as info:
        build_dataset(config(tmp_path, GLAIVE))
    assert info.value.queries == [PIZZA_Q]
    assert not (tmp_path / "out").exists()


def test_written_build_is_byte_identical_on_rebuild(tmp_path: Path) -> None:
    first, _ = build_dataset(config(tmp_path, GLAIVE, DEMO, out=tmp_path / "a", n_call=30))
    second, _ = build_dataset(config(tmp_path, GLAIVE, DEMO, out=tmp_path / "b", n_call=30))
    other, _ = build_dataset(config(tmp_path, GLAIVE, DEMO, out=tmp_path / "c", n_call=30, seed=7))
    names = sorted(p.name for p in first.iterdir())
    assert names == [OUTPUT_MARKER, "audit.json", "eval.jsonl", "manifest.json", "train.jsonl"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "train.jsonl").read_bytes() != (other / "train.jsonl").read_bytes()
    assert (first / "eval.jsonl").read_bytes() == (other / "eval.jsonl").read_bytes()


def test_manifest_records_sources_sizes_and_hashes(tmp_path: Path) -> None:
    out, _ = build_dataset(config(tmp_path, GLAIVE, seed=3))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["recipe"], manifest["seed"]) == ("v2", 3)
    assert manifest["sizes"]["built"] == {"call": 7, "nocall": 2}
    assert manifest["sources"] == [
        {
            "spec": str(GLAIVE),
            "kind": "file",
            "rows": 13,
            "sha256": hashlib.sha256(GLAIVE.read_bytes()).hexdigest(),
        }
    ]
    for name in ("train.jsonl", "eval.jsonl"):
        entry = manifest["files"][name]
        assert entry["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert entry["rows"] == len(load_rows(out / name))
    assert json.loads((out / "audit.json").read_text())["train"]["total"] == 9


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--force"):
        build_dataset(config(tmp_path, GLAIVE))
    assert (out / "keep.txt").read_text() == "precious"
    # --force replaces an earlier build, never a directory holding files it did not write.
    with pytest.raises(FileExistsError, match=r"keep\.txt"):
        build_dataset(config(tmp_path, GLAIVE, force=True))
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    build_dataset(config(tmp_path, GLAIVE))
    first = (out / "train.jsonl").read_bytes()
    build_dataset(config(tmp_path, GLAIVE, seed=5, force=True))
    assert (out / "train.jsonl").read_bytes() != first


def test_default_output_is_the_recipe_artifact_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLX_PLAMO_HOME", str(tmp_path / "home"))
    out, _ = build_dataset(config(tmp_path, GLAIVE, out=None))
    assert out == tmp_path / "home" / "data" / "v2"
    assert data.resolve_dataset("v2") == out


def test_fresh_eval_is_drawn_and_kept_out_of_training(tmp_path: Path) -> None:
    out, plan = build_dataset(config(tmp_path, GLAIVE, DEMO, fresh_eval=True))
    fresh = load_rows(out / "eval_fresh.jsonl")
    train = load_rows(out / "train.jsonl")
    fresh_keys = {normalise_query(r["messages"][1]["content"]) for r in fresh}
    train_keys = {normalise_query(r["messages"][1]["content"]) for r in train}
    assert not fresh_keys & train_keys
    assert all(
        r["tools_source"] == "source" and r["gold"] == r["messages"][2]["content"] for r in fresh
    )
    built = plan.audit["fresh_eval"]["built"]
    assert built["call"] == 40 and Counter(r["kind"] for r in fresh)["call"] == 40
    available_nocall = plan.audit["labels"]["strict_nocall"]
    assert built["nocall"] == min(12, available_nocall)
    # what fresh eval took is no longer available for training
    assert plan.audit["train"]["available"]["nocall"] == available_nocall - built["nocall"]


def test_frozen_eval_file_is_the_seeds_v2_eval() -> None:
    seed = json.loads((SEED_RESULTS / "lora-v2.json").read_text())["rows"]
    questions = load_frozen_questions()
    assert [(q.kind, q.question, q.gold) for q in questions] == [
        (r["kind"], r["question"], r["gold"]) for r in seed
    ]
    # the 40 call questions are the same in every condition of the seed
    base = json.loads((SEED_RESULTS / "base.json").read_text())["rows"]
    assert [q.question for q in questions[:40]] == [
        r["question"] for r in base if r["kind"] == "call"
    ]
