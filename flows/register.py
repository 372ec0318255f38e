"""Register stage: log the classifier as an MLflow pyfunc, register a version, gate the alias."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from plm_core.config import RegisterConfig
from plm_core.registry import log_and_register_classifier
from plm_core.stage import StageRef, read_manifest, run_stage
from plm_core.tracking import ensure_experiment, tracking_uri


@task(name="register", retries=2, retry_delay_seconds=[5, 20], **TASK_DEFAULTS)
def register_task(
    finetuned: StageRef,
    evaluated: StageRef,
    cfg: RegisterConfig,
    runs_dir: str,
    experiment: str,
    uri: str,
    out_dir: str,
) -> StageRef:
    def body(d: Path) -> dict:
        eval_counts = read_manifest(evaluated.path)["counts"]
        ft_counts = read_manifest(finetuned.path)["counts"]
        result = log_and_register_classifier(
            Path(finetuned.path),
            tracking_uri=uri,
            experiment_id=ensure_experiment(uri, experiment, runs_dir),
            model_name=cfg.model_name,
            eval_metrics={k: float(v) for k, v in eval_counts.items() if isinstance(v, int | float)},
            gate_metric=cfg.gate_metric,
            run_id=ft_counts.get("mlflow_run_id"),
            tags={"plm.finetune_digest": finetuned.digest, "plm.eval_digest": evaluated.digest},
        )
        (d / "registration.json").write_text(json.dumps(result, indent=2))
        return result

    return run_stage(
        "register",
        out_dir,
        body,
        params=cfg,
        inputs={"finetune": finetuned.digest, "evaluate": evaluated.digest},
    )


@flow(name="register")
def register_flow(
    finetuned: StageRef,
    evaluated: StageRef,
    cfg: RegisterConfig,
    runs_dir: str = "runs",
    experiment: str = "plm-pipeline",
    force: bool = False,
) -> StageRef:
    # The registry is part of the key: pointing MLFLOW_TRACKING_URI elsewhere registers there too.
    uri = tracking_uri(runs_dir)
    out = stage_dir(runs_dir, "register", cfg, finetuned.digest, evaluated.digest, experiment, uri)
    return call_stage(
        register_task,
        out,
        force=force,
        finetuned=finetuned,
        evaluated=evaluated,
        cfg=cfg,
        runs_dir=runs_dir,
        experiment=experiment,
        uri=uri,
    )
