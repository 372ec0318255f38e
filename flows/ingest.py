"""Ingest stage: raw files -> Parquet shards ``{id, source, text}``."""

from __future__ import annotations

from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from plm_core.config import IngestConfig
from plm_core.data.ingest import ingest, source_digest
from plm_core.stage import StageRef, run_stage


@task(name="ingest", **TASK_DEFAULTS)
def ingest_task(cfg: IngestConfig, raw_digest: str, out_dir: str) -> StageRef:
    return run_stage(
        "ingest", out_dir, lambda d: ingest(cfg, d), params=cfg, inputs={"raw_files": raw_digest}
    )


@flow(name="ingest")
def ingest_flow(cfg: IngestConfig, runs_dir: str = "runs", force: bool = False) -> StageRef:
    """Hash the raw inputs (cheap next to parsing them), then ingest unless that digest was seen."""
    raw_digest = source_digest(cfg)
    out = stage_dir(runs_dir, "ingest", cfg, raw_digest)
    return call_stage(ingest_task, out, force=force, cfg=cfg, raw_digest=raw_digest)
