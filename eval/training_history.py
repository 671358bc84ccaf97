"""Training history from MLflow: an experiment's runs, their loss / examples / checkpoint-eval
metric histories, and the checkpoint evals as points of recall and precision.

`read_training` never fails: a missing store, a missing experiment or an unreadable store
becomes a `Training` with a message saying why there is nothing to show, and a missing sqlite
file is not created (MLflow would create it). Which metrics are read, and what they mean, is
`eval.metric_keys`. A history keeps one value per step, the last logged (a resumed run may log
a step again). Rates logged as percentages are scaled to fractions.

mlflow is imported only when a store is read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eval.metric_keys import EXAMPLES_SEEN, classify_eval_key, wanted_key
from mlx_plamo3.paths import sqlite_path


@dataclass
class Run:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    # metric key -> [(step, value)], sorted by step, one value per step (the last logged)
    histories: dict[str, list[tuple[int, float]]]


@dataclass
class Training:
    uri: str
    experiment: str
    runs: list[Run]
    message: str | None = None  # why there is nothing to show, when there is not


def dedupe_history(points: Iterable[tuple[int, int, float]]) -> list[tuple[int, float]]:
    """(step, timestamp, value) -> [(step, value)] keeping the last value logged at each step
    (a resumed run may log a step again)."""
    by_step: dict[int, float] = {}
    for step, _, value in sorted(points):
        by_step[step] = value
    return sorted(by_step.items())


def read_training(uri: str, experiment: str) -> Training:
    """The experiment's runs with their loss, examples and checkpoint-eval histories.

    Never fails: a missing store, a missing experiment or an unreadable store becomes a
    message in the report. A missing sqlite file is not created (MLflow would create it)."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return Training(uri, experiment, [], f"No MLflow store at {db}, so no training curves.")
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            message = f"The MLflow store {uri} has no experiment '{experiment}'."
            return Training(uri, experiment, [], message)
        runs = []
        for info in client.search_runs(
            [found.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000
        ):
            histories = {}
            for key in sorted(info.data.metrics):
                if wanted_key(key):
                    history = client.get_metric_history(info.info.run_id, key)
                    histories[key] = dedupe_history((m.step, m.timestamp, m.value) for m in history)
            runs.append(
                Run(
                    run_id=info.info.run_id,
                    name=info.info.run_name or info.info.run_id[:8],
                    status=info.info.status,
                    params=dict(info.data.params),
                    histories=histories,
                )
            )
    except Exception as exc:
        # Any store failure (MlflowException, a file that is not a database, ...) costs the
        # training section only, never the rest of the report.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Training(uri, experiment, [], f"Could not read the MLflow store {uri}: {first_line}")
    if not runs:
        return Training(uri, experiment, [], f"Experiment '{experiment}' has no runs yet.")
    return Training(uri, experiment, runs)


def examples_by_step(run: Run) -> dict[int, float]:
    return dict(run.histories.get(EXAMPLES_SEEN, []))


@dataclass(frozen=True)
class CheckpointPoint:
    step: int
    examples: float | None
    rates: dict[str, float]  # rate key -> fraction

    @property
    def recall(self) -> float | None:
        """Args-exact over all call cases."""
        return self.rates.get("args_exact_match")

    @property
    def precision(self) -> float | None:
        """Of the calls emitted on call cases, the share exactly right: args-exact / parse
        (both rates are over the same call cases). None when no call was emitted."""
        parse, exact = self.rates.get("parse_rate"), self.rates.get("args_exact_match")
        if parse is None or exact is None or parse <= 0:
            return None
        return min(1.0, exact / parse)

    @property
    def nocall_precision(self) -> float | None:
        """1 - false-call rate: the share of no-call cases answered without a call."""
        false_call = self.rates.get("false_call_rate")
        return None if false_call is None else 1.0 - false_call


def eval_keys(run: Run, mode: str) -> dict[str, str]:
    """rate key -> the run's metric key for it; strict mode prefers strict keys and falls
    back to study-mode keys when the run logged none."""
    by_variant: dict[bool, dict[str, str]] = {False: {}, True: {}}
    for key in sorted(run.histories):
        found = classify_eval_key(key)
        if found is not None:
            by_variant[found[1]].setdefault(found[0], key)
    if mode == "strict" and by_variant[True]:
        return by_variant[True]
    return by_variant[False] or by_variant[True]


def checkpoint_points(run: Run, mode: str = "study") -> list[CheckpointPoint]:
    """The run's checkpoint evals in step order, each with the examples seen at its step."""
    keys = eval_keys(run, mode)
    columns: dict[str, dict[int, float]] = {}
    for rate, key in keys.items():
        steps = [step for step, _ in run.histories[key]]
        values = [value for _, value in run.histories[key]]
        columns[rate] = dict(zip(steps, values, strict=True))
    steps = sorted({step for column in columns.values() for step in column})
    examples = examples_by_step(run)
    return [
        CheckpointPoint(
            step,
            examples.get(step),
            {rate: column[step] for rate, column in columns.items() if step in column},
        )
        for step in steps
    ]
