"""MLflow setup shared by the stages: where tracking goes and which experiment a run lands in.

The embedded default is a sqlite database under the run directory with artifacts beside it, so a
fresh machine needs no server; ``MLFLOW_TRACKING_URI`` points everything at a real server instead.
The artifact location is set explicitly because MLflow otherwise writes ``./mlruns`` relative to
whatever directory the process happened to start in.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "plm-pipeline"


def tracking_uri(runs_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a sqlite file under ``runs_dir``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = Path(runs_dir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def ensure_experiment(uri: str, name: str = DEFAULT_EXPERIMENT, runs_dir: str | Path | None = None) -> str:
    """Return the experiment id for ``name``, creating it with a local artifact root when embedded."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if runs_dir is not None and uri.startswith("sqlite:"):
        artifact_location = (Path(runs_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)
