"""Run tracking: MLflow (experiment `plamo3-tool-calling`) or nothing.

The default store is `sqlite:///<artifacts root>/mlflow.db` (`mlx_plamo3.paths.mlflow_uri()`,
so `artifacts/mlflow.db` unless MLX_PLAMO_HOME is set); see runs with
`mlflow ui --backend-store-uri sqlite:///artifacts/mlflow.db`. Artifacts of a new experiment
go beside a sqlite store, in `mlartifacts/`, rather than into the working directory.

This module logs the metrics it is given under their keys; the names the trainer logs and the
report reads (loss, examples_seen, eval_<rate>, eval_strict_<rate>) live in `eval.metric_keys`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

from mlx_plamo3.paths import sqlite_path

logger = logging.getLogger(__name__)


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, str]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracks nothing (`--no-mlflow`)."""

    run_id: str | None = None

    def log_params(self, params: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def sqlite_artifact_location(uri: str) -> str | None:
    """`file://<db folder>/mlartifacts` for a sqlite store, else None (MLflow's default)."""
    db = sqlite_path(uri)
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric, finite values only (MLflow rejects None and stores NaN unhelpfully)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class MlflowTracker:
    """One MLflow run; `run_id` given resumes it (a resumed training continues its curves)."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None = None) -> None:
        import mlflow

        db = sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self._mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = mlflow.create_experiment(
                experiment, artifact_location=sqlite_artifact_location(uri)
            )
        else:
            experiment_id = found.experiment_id
        run = None
        if run_id is not None:
            try:
                run = mlflow.start_run(run_id=run_id)
            except mlflow.exceptions.MlflowException as exc:
                # e.g. a resumed run tracked into another store: keep training, new run.
                logger.warning("cannot resume MLflow run %s (%s); starting a new run", run_id, exc)
        if run is None:
            run = mlflow.start_run(run_name=run_name, experiment_id=experiment_id)
        self.run_id = run.info.run_id
        self.uri = uri

    def log_params(self, params: dict[str, str]) -> None:
        # MLflow caps a param value at 6000 characters.
        self._mlflow.log_params({k: v[:6000] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = finite_metrics(metrics)
        if values:
            self._mlflow.log_metrics(values, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)


def make_tracker(
    enabled: bool, uri: str, experiment: str, run_name: str, run_id: str | None = None
) -> Tracker:
    if not enabled:
        return NullTracker()
    return MlflowTracker(uri, experiment, run_name, run_id)
