"""Pretrain stage: Ray Train TorchTrainer over the packed shards, logged to MLflow from rank 0.

The run's ``model`` artifact is the whole stage directory, manifest included, so that
``plm finetune --pretrained <run id>`` on another machine gets a directory it can cache on
(``plm_core.train.pretrained.resolve_pretrained``).
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from flows.tracking import stage_run
from plm_core.config import ModelConfig, PretrainConfig
from plm_core.stage import MANIFEST, StageRef, read_manifest, run_stage
from plm_core.tracking import tracking_uri
from plm_core.train.distributed import pretrain
from plm_core.train.pretrained import MODEL_ARTIFACT


@task(name="pretrain", **TASK_DEFAULTS)
def pretrain_task(
    packed: StageRef,
    tokenizer: StageRef,
    model: ModelConfig,
    cfg: PretrainConfig,
    runs_dir: str,
    experiment: str,
    out_dir: str,
) -> StageRef:
    def body(d: Path) -> dict:
        tags = {"plm.pack_digest": packed.digest, "plm.tokenizer_digest": tokenizer.digest}
        with stage_run(runs_dir, experiment, "pretrain", tags) as run:
            run.log_params("model", model)
            run.log_params("pretrain", cfg)
            result = pretrain(
                Path(packed.path),
                Path(tokenizer.path),
                model,
                cfg,
                d,
                storage_path=Path(runs_dir).resolve() / "ray",
                run_name=f"pretrain-{Path(out_dir).name}",
                mlflow_tracking_uri=run.uri,
                mlflow_run_id=run.run_id,
            )
            return {**result, "mlflow_run_id": run.run_id}

    ref = run_stage(
        "pretrain",
        out_dir,
        body,
        params={"model": model, "pretrain": cfg},
        inputs={"pack": packed.digest, "tokenizer": tokenizer.digest},
    )
    # The manifest exists only once run_stage has published the directory; the driver already
    # logged the rest of it as the model artifact.
    run_id = read_manifest(ref.path)["counts"]["mlflow_run_id"]
    MlflowClient(tracking_uri(runs_dir)).log_artifact(run_id, str(Path(ref.path) / MANIFEST), MODEL_ARTIFACT)
    return ref


@flow(name="pretrain")
def pretrain_flow(
    packed: StageRef,
    tokenizer: StageRef,
    model: ModelConfig,
    cfg: PretrainConfig,
    runs_dir: str = "runs",
    experiment: str = "plm-pipeline",
    force: bool = False,
) -> StageRef:
    out = stage_dir(runs_dir, "pretrain", model, cfg, packed.digest, tokenizer.digest)
    return call_stage(
        pretrain_task,
        out,
        force=force,
        packed=packed,
        tokenizer=tokenizer,
        model=model,
        cfg=cfg,
        runs_dir=runs_dir,
        experiment=experiment,
    )
