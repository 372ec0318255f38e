"""Tokenizer stage: SentencePiece trained on a sample of the cleaned train split."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from plm_core.config import TokenizerConfig
from plm_core.stage import StageRef, run_stage
from plm_core.tokenizer import train_tokenizer


@task(name="tokenizer", **TASK_DEFAULTS)
def tokenizer_task(cleaned: StageRef, cfg: TokenizerConfig, out_dir: str) -> StageRef:
    return run_stage(
        "tokenizer",
        out_dir,
        lambda d: train_tokenizer(Path(cleaned.path), cfg, d),
        params=cfg,
        inputs={"clean": cleaned.digest},
    )


@flow(name="tokenizer")
def tokenizer_flow(
    cleaned: StageRef, cfg: TokenizerConfig, runs_dir: str = "runs", force: bool = False
) -> StageRef:
    out = stage_dir(runs_dir, "tokenizer", cfg, cleaned.digest)
    return call_stage(tokenizer_task, out, force=force, cleaned=cleaned, cfg=cfg)
