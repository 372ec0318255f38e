"""Pack stage: documents -> memory-mappable token shards."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from plm_core.config import PackConfig
from plm_core.data.pack import pack
from plm_core.stage import StageRef, run_stage


@task(name="pack", **TASK_DEFAULTS)
def pack_task(cleaned: StageRef, tokenizer: StageRef, cfg: PackConfig, out_dir: str) -> StageRef:
    return run_stage(
        "pack",
        out_dir,
        lambda d: pack(Path(cleaned.path), Path(tokenizer.path), cfg, d),
        params=cfg,
        inputs={"clean": cleaned.digest, "tokenizer": tokenizer.digest},
    )


@flow(name="pack")
def pack_flow(
    cleaned: StageRef, tokenizer: StageRef, cfg: PackConfig, runs_dir: str = "runs", force: bool = False
) -> StageRef:
    out = stage_dir(runs_dir, "pack", cfg, cleaned.digest, tokenizer.digest)
    return call_stage(pack_task, out, force=force, cleaned=cleaned, tokenizer=tokenizer, cfg=cfg)
