"""Evaluate stage: a fine-tuned model (any task) on a labelled file, a JSON report, metrics to MLflow.

The task comes from the model directory's config.json; the file is read with the reading switches
of the task's FinetuneConfig (text/label fields, CoNLL columns), which are part of the cache key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from plm_core.config import FinetuneConfig
from plm_core.finetune import hub, tasks
from plm_core.stage import StageRef, read_manifest, run_stage
from plm_core.tracking import tracking_uri

# The FinetuneConfig fields that change how an evaluation file is read, per task.
READING_FIELDS = {
    "classification": ("text_field", "label_field", "text_pair_field"),
    "ner": ("token_column", "tag_column", "tag_scheme", "column_separator"),
    "qa": (),
}


def reading_params(task_name: str, cfg: FinetuneConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in READING_FIELDS[task_name]}


def scalar_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's top-level numbers (accuracy, f1, exact_match, n ...): the stage's counts."""
    return {k: float(v) for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@task(name="evaluate", **TASK_DEFAULTS)
def evaluate_task(
    finetuned: StageRef,
    task_name: str,
    cfg: FinetuneConfig,
    data_path: str,
    data_digest: str,
    runs_dir: str,
    out_dir: str,
) -> StageRef:
    def body(d: Path) -> dict:
        report = tasks.evaluate(task_name, Path(finetuned.path), Path(data_path), cfg)
        report["data_path"] = data_path
        (d / "report.json").write_text(json.dumps(report, indent=2, default=str))
        counts = scalar_metrics(report)
        manifest = Path(finetuned.path) / "manifest.json"
        run_id = read_manifest(finetuned.path)["counts"].get("mlflow_run_id") if manifest.is_file() else None
        if run_id:
            client = MlflowClient(tracking_uri(runs_dir))
            for key, value in counts.items():
                client.log_metric(run_id, f"eval_{key}", value)
            client.log_artifact(run_id, str(d / "report.json"), "eval")
        return {**counts, "task": task_name, "headline": report["headline"]}

    return run_stage(
        "evaluate",
        out_dir,
        body,
        params={"task": task_name, "data_path": data_path, **reading_params(task_name, cfg)},
        inputs={"finetune": finetuned.digest, "data": data_digest},
    )


@flow(name="evaluate")
def evaluate_flow(
    finetuned: StageRef,
    cfg: FinetuneConfig,
    runs_dir: str = "runs",
    force: bool = False,
    data_path: str = "",
) -> StageRef:
    """Evaluate on ``data_path``, by default the task's evaluation file (``eval_path``, else ``dev_path``)."""
    task_name = tasks.model_task(Path(finetuned.path))
    path = data_path or tasks.eval_path(cfg)
    path = path if hub.is_hub_ref(path) else str(Path(path).resolve())
    data_digest = hub.data_digest(path)
    reading = reading_params(task_name, cfg)
    out = stage_dir(runs_dir, "evaluate", finetuned.digest, data_digest, task_name, reading)
    return call_stage(
        evaluate_task,
        out,
        force=force,
        finetuned=finetuned,
        task_name=task_name,
        cfg=cfg,
        data_path=path,
        data_digest=data_digest,
        runs_dir=runs_dir,
    )
