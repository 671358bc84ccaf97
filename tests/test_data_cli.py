"""`mlx-plamo data build` and `mlx-plamo data check-leak` through click."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import data
from data.cli import data_group

SAMPLES = Path(data.__file__).parent / "samples"
GLAIVE = SAMPLES / "glaive-function-calling-v2.sample.jsonl"
DEMO = SAMPLES / "llamafactory_glaive_toolcall_en_demo.json"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(data_group, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_demo_build_on_the_llamafactory_sample(tmp_path: Path) -> None:
    code, out, err = run(
        "build", "--recipe", "v2", "--source", DEMO, "--out", tmp_path / "v2", "--quiet"
    )
    assert code == 0, err
    train = (tmp_path / "v2" / "train.jsonl").read_text().splitlines()
    evaluation = (tmp_path / "v2" / "eval.jsonl").read_text().splitlines()
    assert train and len(evaluation) == 52
    assert "frozen eval questions are not in the source" in err
    assert "asked for 1,400 call examples" in err
    # --quiet: no audit block, only where the data went and what to run next.
    out_dir = tmp_path / "v2"
    assert out.splitlines() == [f"wrote {out_dir}", f"next: mlx-plamo train --data {out_dir}"]
    code, out, _ = run("build", "--recipe", "v2", "--source", DEMO, "--out", out_dir, "--force")
    assert code == 0
    assert "300 rows read" in out and "0 eval questions occur in train" in out
    assert f"details   {out_dir / 'audit.json'}" in out


def test_build_combines_repeated_sources_and_check_leak_passes(tmp_path: Path) -> None:
    code, _, err = run(
        "build", "--recipe", "v1", "--source", GLAIVE, "--source", DEMO,
        "--out", tmp_path / "v1", "--quiet", "--fresh-eval",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["sources"]] == [13, 300]
    code, out, err = run("check-leak", tmp_path / "v1", tmp_path / "v1")
    assert code == 0, err
    # eval.jsonl (52) and eval_fresh.jsonl are both checked
    fresh = len((tmp_path / "v1" / "eval_fresh.jsonl").read_text().splitlines())
    assert f"0 of {52 + fresh} eval queries" in out
    assert out.splitlines()[-1] == f"next: mlx-plamo train --data {tmp_path / 'v1'}"


def test_check_leak_fails_naming_the_query(tmp_path: Path) -> None:
    code, _, err = run("build", "--recipe", "v2", "--source", GLAIVE, "--out", tmp_path / "d")
    assert code == 0, err
    evaluation = tmp_path / "d" / "eval.jsonl"
    leaked = json.loads(evaluation.read_text().splitlines()[3])
    train = tmp_path / "leaky.jsonl"
    train.write_text((tmp_path / "d" / "train.jsonl").read_text() + json.dumps(leaked) + "\n")
    code, _, err = run("check-leak", train, evaluation)
    assert code == 1
    assert "1 of 52 eval queries" in err
    assert repr(leaked["messages"][1]["content"]) in err


def test_require_frozen_eval_exits_non_zero(tmp_path: Path) -> None:
    code, _, err = run(
        "build", "--recipe", "v2", "--source", GLAIVE, "--out", tmp_path / "x",
        "--require-frozen-eval", "--quiet",
    )  # fmt: skip
    assert code == 1
    assert "--require-frozen-eval was given" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "nope.jsonl"], "nope.jsonl: no such file or directory"),
        (["--n-call", "-1"], "-1 is not in the range x>=0"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    code, _, err = run("build", "--recipe", "v2", "--out", tmp_path / "o", "--quiet", *args)
    assert code != 0
    assert message in err


def test_existing_output_without_force(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("")
    code, _, err = run("build", "--recipe", "v2", "--source", GLAIVE, "--out", tmp_path / "o")
    assert code == 1 and "use --force" in err


def test_every_option_has_help() -> None:
    for name in ("build", "check-leak"):
        command = data_group.commands[name]
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{name} {param.name} has no help"
    code, out, _ = run("build", "--help")
    text = " ".join(out.split())  # help wraps lines
    assert code == 0 and "v1 6,150" in text and "v2 1,400" in text and "v2 318" in text
