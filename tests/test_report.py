"""The HTML report: built from the seed's records and a small MLflow store made here, checked
as files, as HTML text, and rendered by a real headless Chromium when one is installed."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from eval.cli import report_command
from eval.conditions import condition_sort_key, load_conditions
from eval.explorer import explorer_questions
from eval.figures import FIGURE_NAMES, moving_average
from eval.metric_keys import (
    DEFAULT_EXPERIMENT,
    EXAMPLES_SEEN,
    LOSS,
    TRAINER_EVAL_KEYS,
    checkpoint_eval_metrics,
    classify_eval_key,
    eval_metric_key,
    wanted_key,
)
from eval.report import build_report
from eval.training_history import (
    CheckpointPoint,
    Run,
    checkpoint_points,
    dedupe_history,
)
from mlx_plamo3.paths import artifacts_root, mlflow_uri, sqlite_path

SEED = Path(__file__).parent / "fixtures" / "seed-results"
SEED_LABELS = ["base", "base-fewshot", "lora", "lora-ckpt-step400", "lora-ckpt-step800", "lora-v2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = '<script>alert("pwned")</script>{"name": "get_poem", "arguments": {}}'

# Both runs log the trainer's keys (eval.metric_keys). v1 tells the study's story: recall falls
# while every emitted call stays right. v2 logs no examples_seen, so it is drawn by step.
V1_EVALS = {20: (0.925, 0.90, 0.40), 40: (0.875, 0.875, 0.25), 60: (0.55, 0.55, 0.1667)}
V2_EVALS = {5: (0.9, 0.8, 0.2), 10: (1.0, 1.0, 0.1667)}


def _log_store(uri: str) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("plamo3-tool-calling")
    now = int(time.time() * 1000)

    def metrics(values: dict[str, float], step: int) -> list[Metric]:
        return [Metric(k, v, now + step, step) for k, v in values.items()]

    # One batch per run: every sqlite commit costs an fsync.
    v1 = client.create_run(experiment, run_name="v1-halted").info.run_id
    batch = []
    for step in range(1, 61):
        batch += metrics({"loss": 2.0 / step**0.5, "examples_seen": 8.0 * step, "lr": 1e-4}, step)
        if step in V1_EVALS:
            parse, exact, false_call = V1_EVALS[step]
            values = {
                "eval_parse_rate": parse,
                "eval_func_name_acc": exact,
                "eval_args_exact_match": exact,
                "eval_false_call_rate": false_call,
                "eval_strict_args_exact_match": exact - 0.05,
                "eval_strict_parse_rate": parse,
            }
            batch += metrics(values, step)
    client.log_batch(v1, metrics=batch, params=[Param("data", "v1")])
    client.set_terminated(v1, "KILLED")

    v2 = client.create_run(experiment, run_name="v2").info.run_id
    batch = []
    for step in range(1, 11):
        batch += metrics({"loss": 1.5 / step, "train/other_loss": 1.0}, step)
        if step in V2_EVALS:
            parse, exact, false_call = V2_EVALS[step]
            values = {
                "eval_parse_rate": parse,
                "eval_args_exact_match": exact,
                "eval_false_call_rate": false_call,
            }
            batch += metrics(values, step)
    client.log_batch(v2, metrics=batch)
    client.set_terminated(v2, "FINISHED")


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    _log_store(uri)
    return uri


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's records plus one condition whose prediction carries a script tag."""
    out = tmp_path_factory.mktemp("results")
    shutil.copytree(SEED, out, dirs_exist_ok=True)
    rows = json.loads((SEED / "lora-v2.json").read_text())["rows"][:3]
    rows[0] = {**rows[0], "pred": EVIL}
    (out / "untrusted.json").write_text(
        json.dumps({"summary": {"condition": "untrusted", "model": "tiny-random"}, "rows": rows})
    )
    (out / "notes.json").write_text(json.dumps({"not": "records"}))
    return out


@pytest.fixture(scope="module")
def report(results_dir: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("report")
    return build_report(results_dir, out, tracking_uri=mlflow_store)


@pytest.fixture(scope="module")
def html(report) -> str:
    return report.index.read_text(encoding="utf-8")


# ---- pure parts --------------------------------------------------------------------------------


def test_conditions_are_ordered_and_labelled_from_summaries() -> None:
    conditions, skipped = load_conditions(SEED)
    assert [c.label for c in conditions] == SEED_LABELS
    assert skipped == []
    # lora-400.json's summary names its condition "lora": the label comes from the summary.
    assert next(c for c in conditions if c.label == "lora").path.name == "lora-400.json"
    deep, _ = load_conditions(SEED, recursive=True)
    assert [c.label for c in deep] == [
        *SEED_LABELS,
        "leaked-eval/base",
        "leaked-eval/base-fewshot",
        "leaked-eval/lora",
    ]
    assert sorted(["zeta", "base-fewshot", "alpha", "base"], key=condition_sort_key) == [
        "base",
        "base-fewshot",
        "alpha",
        "zeta",
    ]


def test_rescored_rates_match_the_seed_and_strict_mode_differs() -> None:
    seed = {c.label: c.summary for c in load_conditions(SEED)[0]}
    assert seed["base"]["func_name_acc"] == 0.325
    assert seed["lora-ckpt-step800"]["counts"]["args_exact_match"] == [22, 40]
    strict = {c.label: c.summary for c in load_conditions(SEED, "strict")[0]}
    # The base model's schema echoes stop counting as calls.
    assert strict["base"]["func_name_acc"] < seed["base"]["func_name_acc"]


def test_explorer_matches_call_questions_across_conditions() -> None:
    conditions, _ = load_conditions(SEED)
    questions = explorer_questions(conditions)
    calls = [q for q in questions if q.kind == "call"]
    nocalls = [q for q in questions if q.kind == "nocall"]
    assert len(calls) == 40
    assert all(None not in q.cells for q in calls)
    # Passes per condition are the args-exact counts.
    v2, step800 = SEED_LABELS.index("lora-v2"), SEED_LABELS.index("lora-ckpt-step800")
    assert sum(q.cells[v2].ok for q in calls) == 40
    assert sum(q.cells[step800].ok for q in calls) == 22
    # v2's strict no-call set differs from the v1-era set: those cells are "not asked".
    assert len(nocalls) > 12
    assert any(q.cells[v2] is None for q in nocalls)
    assert sum(not q.cells[v2].ok for q in nocalls if q.cells[v2] is not None) == 2
    first = calls[0]
    assert [name for name, _ in first.cells[0].badges] == ["parse", "name", "args"]
    assert calls[0].question.startswith("I'm feeling a bit down")


def test_metric_key_classification() -> None:
    assert classify_eval_key("eval_args_exact_match") == ("args_exact_match", False)
    assert classify_eval_key("eval_strict_func_name_acc") == ("func_name_acc", True)
    assert classify_eval_key("eval_parse_rate") == ("parse_rate", False)
    # Only the trainer's names: no guessing at other trackers' keys.
    assert classify_eval_key("ckpt/false_call_pct") is None and classify_eval_key("loss") is None
    assert wanted_key("loss") and wanted_key("examples_seen") and not wanted_key("train/loss")


def test_trainer_metric_names_are_pinned() -> None:
    # Existing MLflow stores hold these names: changing one orphans every run logged before.
    assert (DEFAULT_EXPERIMENT, LOSS, EXAMPLES_SEEN) == (
        "plamo3-tool-calling",
        "loss",
        "examples_seen",
    )
    rates = {"parse_rate": 0.9, "func_name_acc": 0.8, "args_exact_match": 0.7}
    summary = {
        **rates,
        "false_call_rate": None,
        "n_call": 40,
        "strict": {**rates, "parse_rate": 0.5},
    }
    assert checkpoint_eval_metrics(summary) == {
        "eval_parse_rate": 0.9,
        "eval_func_name_acc": 0.8,
        "eval_args_exact_match": 0.7,
        "eval_strict_parse_rate": 0.5,
        "eval_strict_func_name_acc": 0.8,
        "eval_strict_args_exact_match": 0.7,
    }
    assert eval_metric_key("false_call_rate", strict=True) == "eval_strict_false_call_rate"
    with pytest.raises(ValueError, match="unknown rate"):
        eval_metric_key("loss")
    # The report reads exactly what the trainer writes.
    assert len(TRAINER_EVAL_KEYS) == 8
    for key, found in TRAINER_EVAL_KEYS.items():
        assert classify_eval_key(key) == found and wanted_key(key)
    assert wanted_key(LOSS) and wanted_key(EXAMPLES_SEEN)


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite:///artifacts/mlflow.db") == Path("artifacts/mlflow.db")
    assert sqlite_path("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert sqlite_path("sqlite:///~/mlflow.db") == Path("~/mlflow.db")  # as SQLAlchemy reads it
    assert sqlite_path("http://localhost:5000") is None
    assert sqlite_path("sqlite://") is None  # in memory: no file
    assert sqlite_path(mlflow_uri()) == artifacts_root() / "mlflow.db"


def test_checkpoint_points_recall_and_precision() -> None:
    run = Run(
        "r",
        "r",
        "FINISHED",
        {},
        {
            "examples_seen": [(1, 8.0), (2, 16.0)],
            "eval_parse_rate": [(1, 0.55), (2, 0.0)],
            "eval_args_exact_match": [(1, 0.55), (2, 0.0)],
            "eval_false_call_rate": [(1, 0.25)],
            "eval_strict_args_exact_match": [(1, 0.5), (2, 0.0)],
        },
    )
    first, second = checkpoint_points(run)
    assert (first.step, first.examples) == (1, 8.0)
    assert first.recall == 0.55 and first.precision == 1.0 and first.nocall_precision == 0.75
    assert second.precision is None and second.nocall_precision is None  # no call emitted
    # strict mode uses the strict keys the run logged.
    assert checkpoint_points(run, "strict")[0].recall == 0.5
    assert CheckpointPoint(3, None, {"parse_rate": 0.8, "args_exact_match": 0.4}).precision == 0.5


def test_small_helpers() -> None:
    assert dedupe_history([(2, 5, 0.1), (1, 1, 0.9), (2, 9, 0.2)]) == [(1, 0.9), (2, 0.2)]
    assert moving_average([1.0, 2.0, 3.0, 4.0], 3) == [1.5, 2.0, 3.0, 3.5]
    assert moving_average([5.0, 1.0], 1) == [5.0, 1.0]


# ---- the report --------------------------------------------------------------------------------


def test_html_lists_every_condition_with_intervals(html: str, report) -> None:
    table = html[html.index('id="condition-table"') : html.index('id="provenance"')]
    for label in [*SEED_LABELS, "untrusted"]:
        assert f'<th scope="row">{label}</th>' in table
    assert report.conditions == [*SEED_LABELS, "untrusted"]
    # Wilson 95%: 40/40 -> [91.2%, 100%]; 36/40 -> [76.9%, 96.0%]; 0/40 -> [0%, 8.8%].
    assert "40/40 · 95% CI 91.2%–100.0%" in table
    assert "36/40 · 95% CI 76.9%–96.0%" in table
    assert "0/40 · 95% CI 0.0%–8.8%" in table
    assert "40/40: 95% CI lower bound 91.2%" in table  # honest hover text at the extreme
    # Provenance recorded in a summary is shown; the non-records file is reported, not fatal.
    assert "tiny-random" in html
    assert "notes.json" in html and any("notes.json" in n for n in report.notes)


def test_untrusted_prediction_stays_escaped(html: str) -> None:
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    assert 'alert("pwned")' not in html
    assert html.count("<script") == 1  # only the page's own filter script


def test_no_network_resources(html: str) -> None:
    refs = re.findall(r"""(?:src|href|action)\s*=\s*["']?([^"'\s>]*)""", html, re.I)
    assert refs, "expected the embedded figures"
    assert all(not re.match(r"(https?:)?//", ref, re.I) for ref in refs)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "@import" not in html


def test_figures_are_pngs_and_embedded(report, html: str) -> None:
    figures = report.index.parent / "figures"
    assert sorted(p.name for p in figures.iterdir()) == sorted(FIGURE_NAMES)
    for name in FIGURE_NAMES:
        data = (figures / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        assert "data:image/png;base64," + base64.b64encode(data).decode() in html


def test_training_section_from_mlflow(report, html: str) -> None:
    assert report.runs == 2
    section = html[html.index('id="training"') : html.index('id="explorer-section"')]
    assert "v1-halted" in section and "KILLED" in section and "v2" in section
    # v1 at step 60: recall 55.0%, precision 100.0%, 1 - false-call 83.3%.
    assert re.search(r">60<.*?>55\.0%<.*?>100\.0%<.*?>83\.3%<", section, re.S)
    # v2 at step 5: 80% args-exact of 90% parsed -> precision 88.9%.
    assert ">88.9%<" in section
    assert "precision" in section and "args-exact ÷ parse" in section


def test_missing_mlflow_store_is_reported_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "report"
    stale = out / "figures" / "training_loss.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG_MAGIC)
    db = tmp_path / "absent" / "mlflow.db"
    result = build_report(SEED, out, tracking_uri=f"sqlite:///{db}")
    html = result.index.read_text()
    assert "No MLflow store at" in html
    assert not db.exists()  # reading never creates a store
    assert not stale.exists()  # a figure from an earlier report is not left behind
    assert (out / "figures" / "metrics_by_condition.png").is_file()


def test_unreadable_mlflow_store_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_text("not a database")
    result = build_report(SEED, tmp_path / "out", tracking_uri=f"sqlite:///{db}")
    assert "Could not read the MLflow store" in result.index.read_text()
    assert result.conditions == SEED_LABELS


def test_unknown_experiment_is_reported(mlflow_store: str, tmp_path: Path) -> None:
    result = build_report(SEED, tmp_path, tracking_uri=mlflow_store, experiment="nope")
    assert "has no experiment &#39;nope&#39;" in result.index.read_text()
    assert result.runs == 0


def test_cli(results_dir: Path, mlflow_store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--results", str(results_dir), "--mlflow", mlflow_store, "--out", str(out)]
    result = CliRunner().invoke(report_command, [*args, "--mode", "strict", "--title", "T<1>"])
    assert result.exit_code == 0, result.output
    assert "7 conditions, 2 MLflow runs" in result.output
    html = (out / "index.html").read_text()
    assert "<title>T&lt;1&gt;</title>" in html and "scoring mode <b>strict</b>" in html
    # Defaults: the artifacts root (isolated per test by conftest); no results is not fatal.
    result = CliRunner().invoke(report_command, ["--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert (
        "No evaluation records found"
        in (tmp_path / "artifacts" / "reports" / "index.html").read_text()
    )


# ---- a real browser ----------------------------------------------------------------------------


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(find_chromium() is None, reason="chromium not installed")
def test_renders_in_headless_chromium(report, tmp_path: Path) -> None:
    chromium = find_chromium()
    base = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    url = report.index.resolve().as_uri()
    shot = tmp_path / "screenshot.png"
    render = subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1400,2000", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert render.returncode == 0, render.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_MAGIC)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for stderr in (render.stderr, dom.stderr):
        assert "Uncaught" not in stderr and "CONSOLE" not in stderr, stderr[-2000:]
    # The filter script ran to its end, and the tables are in the rendered DOM.
    assert 'data-ready="1"' in dom.stdout
    assert 'id="condition-table"' in dom.stdout and 'id="explorer"' in dom.stdout
    assert re.search(r'id="f-count"[^>]*>\d+ of \d+ questions shown<', dom.stdout)
    assert "&lt;script&gt;alert" in dom.stdout
