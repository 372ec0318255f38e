"""Register stage: log a fine-tuned model (any task) or a decoder LM as an MLflow pyfunc, register a
version under the task's name, gate the aliases.

The task comes from the model directory's config.json, the registered name from
``RegisterConfig.name_for(task)``. Lineage travels as version tags: the fine-tune run's ``plm.*``
tags (pretrain run id, tokenizer and task-data digests), the eval set digest the gate compares
on, and the code version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from plm_core.config import RegisterConfig
from plm_core.eval_plots import evaluation_plots
from plm_core.registry import TASKS, RetryPolicy, log_and_register, model_task
from plm_core.stage import StageRef, code_version, read_manifest, run_stage
from plm_core.tracking import ensure_experiment, tracking_uri

# Run tags copied onto the version: what lineage needs without opening the run.
LINEAGE_TAGS = ("plm.pretrain_run_id", "plm.task_data_digest", "plm.tokenizer_digest", "plm.from_pretrained")


def retry_policy(cfg: RegisterConfig) -> RetryPolicy:
    return RetryPolicy(
        attempts=cfg.retry_attempts, initial_delay=cfg.retry_initial_delay, max_delay=cfg.retry_max_delay
    )


def _run_tags(uri: str, run_id: str | None) -> dict[str, str]:
    if not run_id:
        return {}
    tags = MlflowClient(uri).get_run(run_id).data.tags
    return {k: tags[k] for k in LINEAGE_TAGS if tags.get(k)}


def _numbers(counts: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in counts.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@task(name="register", **TASK_DEFAULTS)
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
        model_dir = Path(finetuned.path)
        task_name = model_task(model_dir)
        evaluation = read_manifest(evaluated.path)
        report_path = Path(evaluated.path) / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        run_id = read_manifest(finetuned.path)["counts"].get("mlflow_run_id")
        metrics = _numbers(evaluation["counts"])
        gate = (
            cfg.gate_metric
            if task_name == "classification"
            else report.get("headline") or TASKS[task_name].gate_metric
        )
        metrics_path = model_dir / "metrics.json"
        history = json.loads(metrics_path.read_text()).get("history", []) if metrics_path.is_file() else []
        plots = evaluation_plots(report, d / "plots", history)
        result = log_and_register(
            model_dir,
            task=task_name,
            tracking_uri=uri,
            experiment_id=ensure_experiment(uri, experiment, runs_dir),
            model_name=cfg.name_for(task_name),
            eval_metrics=metrics,
            gate_metric=gate,
            eval_set_digest=evaluation["inputs"].get("data") or evaluated.digest,
            on_new_eval_set=cfg.on_new_eval_set,
            run_id=run_id,
            tags={
                **_run_tags(uri, run_id),
                "plm.finetune_digest": finetuned.digest,
                "plm.eval_digest": evaluated.digest,
                "plm.finetune_run_id": run_id or "",
                "plm.code_version": code_version(),
            },
            artifacts=[("plots", p) for p in plots],
            retry=retry_policy(cfg),
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


@task(name="register-lm", **TASK_DEFAULTS)
def register_lm_task(
    pretrained: StageRef,
    tokenizer: StageRef,
    cfg: RegisterConfig,
    runs_dir: str,
    experiment: str,
    uri: str,
    out_dir: str,
) -> StageRef:
    """A decoder's pretrain directory as the ``lm`` pyfunc, gated on validation loss over the
    packed validation split (the eval set digest is the pack stage's)."""

    def body(d: Path) -> dict:
        manifest = read_manifest(pretrained.path)
        run_id = manifest["counts"].get("mlflow_run_id")
        result = log_and_register(
            Path(pretrained.path),
            task="lm",
            tracking_uri=uri,
            experiment_id=ensure_experiment(uri, experiment, runs_dir),
            model_name=cfg.lm_model_name,
            eval_metrics={k: v for k, v in _numbers(manifest["counts"]).items() if "loss" in k},
            eval_set_digest=manifest["inputs"].get("pack"),
            on_new_eval_set=cfg.on_new_eval_set,
            run_id=run_id,
            tags={
                "plm.pretrain_run_id": run_id or "",
                "plm.pretrain_digest": pretrained.digest,
                "plm.tokenizer_digest": tokenizer.digest,
                "plm.pack_digest": manifest["inputs"].get("pack", ""),
                "plm.code_version": code_version(),
            },
            tokenizer_dir=Path(tokenizer.path),
            retry=retry_policy(cfg),
        )
        (d / "registration.json").write_text(json.dumps(result, indent=2))
        return result

    return run_stage(
        "register_lm",
        out_dir,
        body,
        params=cfg,
        inputs={"pretrain": pretrained.digest, "tokenizer": tokenizer.digest},
    )


@flow(name="register-lm")
def register_lm_flow(
    pretrained: StageRef,
    tokenizer: StageRef,
    cfg: RegisterConfig,
    runs_dir: str = "runs",
    experiment: str = "plm-pipeline",
    force: bool = False,
) -> StageRef:
    uri = tracking_uri(runs_dir)
    out = stage_dir(runs_dir, "register_lm", cfg, pretrained.digest, tokenizer.digest, experiment, uri)
    return call_stage(
        register_lm_task,
        out,
        force=force,
        pretrained=pretrained,
        tokenizer=tokenizer,
        cfg=cfg,
        runs_dir=runs_dir,
        experiment=experiment,
        uri=uri,
    )
