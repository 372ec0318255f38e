"""Finetune stage: one task (classification, NER or extractive QA, ``cfg.task``) from the pretrained
checkpoint or from random init."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from flows.tracking import stage_run
from plm_core.config import FinetuneConfig, ModelConfig
from plm_core.finetune import hub, tasks
from plm_core.stage import StageRef, read_manifest, run_stage


def task_data_digest(cfg: FinetuneConfig) -> str:
    """Content digest of the task's train and dev files, so edited data reruns fine-tuning."""
    return ":".join(hub.data_digest(p)[:16] for p in (cfg.train_path, cfg.dev_path))


@task(name="finetune", **TASK_DEFAULTS)
def finetune_task(
    tokenizer: StageRef,
    pretrained: StageRef | None,
    model: ModelConfig,
    cfg: FinetuneConfig,
    data_digest: str,
    runs_dir: str,
    experiment: str,
    out_dir: str,
) -> StageRef:
    pretrain_run = read_manifest(pretrained.path)["counts"].get("mlflow_run_id", "") if pretrained else ""

    def body(d: Path) -> dict:
        tags = {
            "plm.task": cfg.task,
            "plm.from_pretrained": str(pretrained is not None),
            "plm.pretrain_run_id": pretrain_run,
            "plm.task_data_digest": data_digest,
            "plm.tokenizer_digest": tokenizer.digest,
        }
        name = "finetune" if cfg.task == "classification" else f"finetune-{cfg.task}"
        name += "" if pretrained else "-random-init"
        with stage_run(runs_dir, experiment, name, tags) as run:
            run.log_params("finetune", cfg)
            result = tasks.finetune(
                cfg.task,
                Path(tokenizer.path),
                Path(pretrained.path) if pretrained else None,
                model,
                cfg,
                d,
                on_metrics=run.log_metrics,
            )
            run.log_metrics({k: v for k, v in result.items() if k.startswith("dev_")})
            run.log_artifact(d / "metrics.json")
            return {**result, "mlflow_run_id": run.run_id}

    inputs = {"tokenizer": tokenizer.digest, "task_data": data_digest}
    if pretrained:
        inputs["pretrain"] = pretrained.digest
    return run_stage("finetune", out_dir, body, params={"model": model, "finetune": cfg}, inputs=inputs)


@flow(name="finetune")
def finetune_flow(
    tokenizer: StageRef,
    pretrained: StageRef | None,
    model: ModelConfig,
    cfg: FinetuneConfig,
    runs_dir: str = "runs",
    experiment: str = "plm-pipeline",
    force: bool = False,
) -> StageRef:
    tasks.check_task(cfg.task)
    data_digest = task_data_digest(cfg)
    upstream = pretrained.digest if pretrained else "random-init"
    out = stage_dir(runs_dir, "finetune", model, cfg, tokenizer.digest, upstream, data_digest)
    return call_stage(
        finetune_task,
        out,
        force=force,
        tokenizer=tokenizer,
        pretrained=pretrained,
        model=model,
        cfg=cfg,
        data_digest=data_digest,
        runs_dir=runs_dir,
        experiment=experiment,
    )
