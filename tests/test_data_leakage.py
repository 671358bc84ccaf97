"""The leakage guard and the helpers the trainer uses to find and read built datasets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from data import LeakageError, check_no_leak, load_rows, normalise_query, resolve_dataset
from data.leakage import find_overlap
from data.prompt import example_row


def rows(*queries: str) -> list[dict]:
    return [example_row("", q, "ok", "nocall", []) for q in queries]


def test_normalise_query_folds_case_and_whitespace() -> None:
    assert normalise_query("  Flip\ta   COIN,\n please ") == "flip a coin, please"
    assert normalise_query("Café ÉTÉ") == "café été"


def test_overlap_is_found_across_case_and_whitespace() -> None:
    train = rows("Flip a coin", "What is 2+2?", "Tell me a joke")
    evaluation = rows("tell me a   JOKE", "Something new", "flip  a coin", "Tell me a joke")
    overlap, n_train, n_eval = find_overlap(train, evaluation)
    # Eval spelling, eval order, each query once.
    assert overlap == ["tell me a   JOKE", "flip  a coin"]
    assert (n_train, n_eval) == (3, 4)


def test_check_no_leak_names_the_overlapping_queries() -> None:
    with pytest.raises(LeakageError) as info:
        check_no_leak(rows("Flip a coin", "x"), rows("FLIP A COIN", "y"))
    assert info.value.queries == ["FLIP A COIN"]
    assert "'FLIP A COIN'" in str(info.value) and "1 of 2 eval queries" in str(info.value)


def test_check_no_leak_is_quiet_when_disjoint() -> None:
    check_no_leak(rows("a", "b"), rows("c"))


def test_long_overlap_lists_are_shortened() -> None:
    queries = [f"question {i}" for i in range(25)]
    with pytest.raises(LeakageError) as info:
        check_no_leak(rows(*queries), rows(*queries))
    assert len(info.value.queries) == 25
    assert "and 15 more" in str(info.value)


def test_row_without_a_user_message_is_named() -> None:
    bad = {"messages": [{"role": "system", "content": "s"}], "kind": "call"}
    with pytest.raises(ValueError, match="eval row 2: no user message"):
        find_overlap(rows("a"), [*rows("b"), bad])


def test_resolve_dataset_by_recipe_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_PLAMO_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="mlx-plamo data build --recipe v2"):
        resolve_dataset("v2")
    built = tmp_path / "home" / "data" / "v2"
    built.mkdir(parents=True)
    (built / "train.jsonl").write_text("")
    assert resolve_dataset("v2") == built
    assert resolve_dataset(str(built)) == built


def test_resolve_dataset_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_PLAMO_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_dataset(str(tmp_path / "nowhere" / "v2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl missing"):
        resolve_dataset(str(tmp_path / "empty"))


def test_load_rows_reads_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    good = rows("a", "b")
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + "\n")
    assert load_rows(path) == good


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("kind"), "'kind' must be one of"),
        (lambda r: r["messages"].pop(), "'messages' must be a list of at least 3"),
        (lambda r: r["messages"][1].update(role="assistant"), r"'messages'\[1\] must have 'role'"),
        (lambda r: r["messages"][2].update(content=None), r"'messages'\[2\] has no string"),
    ],
)
def test_load_rows_names_file_line_and_key(tmp_path: Path, mutate, message: str) -> None:
    good, bad = rows("a", "b")
    mutate(bad)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ") + message):
        load_rows(path)


def test_load_rows_rejects_non_json_line(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: not JSON")):
        load_rows(path)
