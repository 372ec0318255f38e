"""The Ray Train driver of the pretrain stage: start workers, run ``train_loop_per_worker``, and turn
the final checkpoint into the stage's output directory (docs/contracts.md, "pretrain").

Ray Train V2 (DESIGN section 7): Tune callbacks are rejected, so workers log to MLflow themselves;
``Result.metrics`` only holds what was reported with a checkpoint, so the loss history travels in
the checkpoint (history.json) and is read back from there.

Fault tolerance: ``FailureConfig(max_failures)`` restarts the worker group when a worker dies, and
the restarted workers resume from the last reported checkpoint; the MLflow run id travels in the
``train_loop_config``, so the restarted rank 0 keeps logging into the same run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from plm_core.config import ModelConfig, PretrainConfig
from plm_core.data.loader import PackedSequences
from plm_core.errors import ConfigError, InputError
from plm_core.models.factory import pretraining_model
from plm_core.models.io import load_weights, save_model
from plm_core.objectives.registry import check_objectives
from plm_core.train.checkpoint import read_trainer_state
from plm_core.train.loop import check_speed_options, train_loop_per_worker
from plm_core.train.plots import plot_loss_curve
from plm_core.train.pretrained import MODEL_ARTIFACT, resolve_pretrained


def _read_tokenizer(tokenizer_dir: Path) -> dict[str, Any]:
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise InputError(path, "missing; not a tokenizer directory")
    return json.loads(path.read_text())


def _check(model_cfg: ModelConfig, cfg: PretrainConfig, tokenizer: dict[str, Any], pack_dir: Path) -> None:
    """Fail in the driver, with a one-line message, what would otherwise fail inside every worker."""
    check_objectives(model_cfg.family, cfg)
    check_speed_options(cfg)
    if model_cfg.vocab_size < tokenizer["vocab_size"]:
        raise ConfigError(
            f"model vocab_size {model_cfg.vocab_size} < tokenizer vocab_size {tokenizer['vocab_size']}"
        )
    if cfg.seq_len > model_cfg.max_position and model_cfg.position == "learned":
        raise ConfigError(f"seq_len {cfg.seq_len} exceeds the model's max_position {model_cfg.max_position}")
    if cfg.max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {cfg.max_steps}")
    for split in ("train", "validation"):
        PackedSequences(pack_dir, split, cfg.seq_len)


def _storage(storage_path: str | Path) -> str:
    """A local directory made absolute (Ray needs one), or an object-store URI (``s3://...``) as is."""
    text = str(storage_path)
    return text if "://" in text else str(Path(text).resolve())


def scaling_config(cfg: PretrainConfig) -> ScalingConfig:
    """Workers and what each one reserves: ``threads_per_worker`` CPUs, plus ``gpus_per_worker``
    GPUs with ``use_gpu`` (Ray Train then picks NCCL; gloo on CPU)."""
    resources: dict[str, float] = {"CPU": cfg.threads_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources)


def _ensure_ray(cfg: PretrainConfig) -> None:
    """Join ``RAY_ADDRESS``'s cluster if set, else start a local Ray.

    Locally the CPU count is raised to what the workers ask for: on a 2-core machine a run with
    2 workers x 2 threads should oversubscribe, not wait forever for resources that never come.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        wanted = cfg.num_workers * (0 if cfg.use_gpu else cfg.threads_per_worker)
        ray.init(num_cpus=max(os.cpu_count() or 1, wanted), include_dashboard=False)


def pretrain(
    pack_dir: Path,
    tokenizer_dir: Path,
    model_cfg: ModelConfig,
    cfg: PretrainConfig,
    out_dir: Path,
    *,
    storage_path: str | Path,
    run_name: str,
    mlflow_tracking_uri: str | None = None,
    mlflow_run_id: str | None = None,
    fault_injection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain with the family's objective on ``cfg.num_workers`` Ray workers and write the model into ``out_dir``.

    Rerunning with the same ``storage_path`` (a directory or an object-store URI) and ``run_name``
    resumes from the run's last checkpoint; rerunning a finished run trains nothing and writes the
    same model. ``cfg.init_from`` (a directory or MLflow run id) starts from pretrained weights.
    ``fault_injection`` is for chaos tests (``loop._inject_fault``). Returns {"steps", "first_loss", "final_loss", "val_loss", "tokens_seen",
    "seconds" (wall clock of the Ray run), "tokens_per_second" (training steps only)}.
    """
    tokenizer = _read_tokenizer(tokenizer_dir)
    if model_cfg.vocab_size == 0:
        model_cfg = replace(model_cfg, vocab_size=tokenizer["vocab_size"])
    _check(model_cfg, cfg, tokenizer, Path(pack_dir))
    if cfg.init_from:
        cfg = replace(cfg, init_from=str(resolve_pretrained(cfg.init_from, mlflow_tracking_uri)))
    _ensure_ray(cfg)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "pack_dir": str(Path(pack_dir).resolve()),
            "tokenizer": tokenizer,
            "tokenizer_dir": str(Path(tokenizer_dir).resolve()),
            "model": asdict(model_cfg),
            "pretrain": asdict(cfg),
            "mlflow_tracking_uri": mlflow_tracking_uri,
            "mlflow_run_id": mlflow_run_id,
            "fault_injection": fault_injection,
        },
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            storage_path=_storage(storage_path),
            name=run_name,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    started = time.time()
    result = trainer.fit()
    seconds = time.time() - started

    model = pretraining_model(model_cfg, cfg)
    with result.checkpoint.as_directory() as ckpt_dir:
        state = read_trainer_state(Path(ckpt_dir))
        load_weights(model, Path(ckpt_dir))
    out_dir = Path(out_dir)
    save_model(model, model_cfg, out_dir, extra={"task": cfg.objective, "pretrain": asdict(cfg)})

    summary = {
        "steps": state.step,
        "first_loss": state.train_history[0]["loss"],
        "final_loss": state.train_history[-1]["loss"],
        "val_loss": state.val_history[-1]["val_loss"],
        "tokens_seen": state.tokens_seen,
        "seconds": round(seconds, 3),
        "tokens_per_second": state.tokens_seen / max(state.seconds, 1e-9),
    }
    metrics = {**summary, "train": state.train_history, "validation": state.val_history}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_loss_curve(
        state.train_history, state.val_history, out_dir / "loss_curve.png", f"{cfg.objective} pretraining"
    )
    if mlflow_tracking_uri and mlflow_run_id:
        client = MlflowClient(mlflow_tracking_uri)
        client.log_artifact(mlflow_run_id, str(out_dir / "loss_curve.png"))
        client.log_artifact(mlflow_run_id, str(out_dir / "metrics.json"))
        # What fine-tuning resolves a run id to (plm_core.train.pretrained.resolve_pretrained).
        client.log_artifacts(mlflow_run_id, str(out_dir), MODEL_ARTIFACT)
    return summary
