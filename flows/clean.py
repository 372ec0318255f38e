"""Clean stage: normalisation, boilerplate, filters, exact dedup, train/validation split."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from plm_core.config import CleanConfig
from plm_core.data.clean import clean
from plm_core.stage import StageRef, run_stage


@task(name="clean", **TASK_DEFAULTS)
def clean_task(ingested: StageRef, cfg: CleanConfig, out_dir: str) -> StageRef:
    return run_stage(
        "clean",
        out_dir,
        lambda d: clean(Path(ingested.path), cfg, d),
        params=cfg,
        inputs={"ingest": ingested.digest},
    )


@flow(name="clean")
def clean_flow(ingested: StageRef, cfg: CleanConfig, runs_dir: str = "runs", force: bool = False) -> StageRef:
    out = stage_dir(runs_dir, "clean", cfg, ingested.digest)
    return call_stage(clean_task, out, force=force, ingested=ingested, cfg=cfg)
