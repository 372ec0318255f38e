"""MLflow runs around stage bodies: one run per stage execution, failed runs marked as such."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from plm_core.stage import code_version
from plm_core.tracking import ensure_experiment, tracking_uri


class StageRun:
    """A thin handle on one MLflow run that the stage body logs into."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.experiment_id = experiment_id

    def log_params(self, prefix: str, cfg: Any) -> None:
        values = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
        params = [Param(f"{prefix}.{k}", str(v)[:6000]) for k, v in values.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


@contextmanager
def stage_run(
    runs_dir: str, experiment: str, name: str, tags: dict[str, str] | None = None
) -> Iterator[StageRun]:
    uri = tracking_uri(runs_dir)
    exp_id = ensure_experiment(uri, experiment, runs_dir)
    client = MlflowClient(uri)
    run = client.create_run(
        exp_id, run_name=name, tags={"plm.stage": name, "plm.code_version": code_version(), **(tags or {})}
    )
    handle = StageRun(client, run.info.run_id, uri, exp_id)
    try:
        yield handle
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
