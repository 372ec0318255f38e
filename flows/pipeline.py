"""The whole pipeline: each stage is a sub-flow whose task is cached on content digests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_markdown_artifact

from flows.artifacts import publish_run_artifacts
from flows.clean import clean_flow
from flows.evaluate import evaluate_flow
from flows.finetune import finetune_flow
from flows.ingest import ingest_flow
from flows.pack import pack_flow
from flows.params import TASK_SECTIONS, PipelineParams
from flows.pretrain import pretrain_flow
from flows.register import register_flow, register_lm_flow
from flows.tokenizer import tokenizer_flow
from flows.tracking import StageRun, pipeline_run, record_stages
from plm_core.errors import ConfigError
from plm_core.stage import StageRef, read_manifest

GPU_TAG = "gpu"


@flow(name="plm-pipeline", log_prints=True)
def pipeline(params: PipelineParams, compare_random_init: bool = False) -> dict[str, Any]:
    """Corpus -> cleaned shards -> tokenizer -> packed tokens -> pretraining -> fine-tuning ->
    evaluation -> MLflow registration. Returns a summary with every stage's directory and the
    headline figures."""
    # One MLflow parent run per pipeline run; the stages' runs nest under it (flows/tracking.py).
    with pipeline_run(str(Path(params.runs_dir).resolve()), params.experiment) as parent:
        return _pipeline(params, compare_random_init, parent)


def _pipeline(params: PipelineParams, compare_random_init: bool, parent: StageRun) -> dict[str, Any]:
    logger = get_run_logger()
    runs = str(Path(params.runs_dir).resolve())
    force = params.force
    ingested = ingest_flow(params.ingest, runs, force)
    cleaned = clean_flow(ingested, params.clean, runs, force)
    tokenizer = tokenizer_flow(cleaned, params.tokenizer, runs, force)
    packed = pack_flow(cleaned, tokenizer, params.pack, runs, force)
    # Task runs tagged "gpu" share the tag concurrency limit that flows/deploy.py creates on a server.
    with tags(GPU_TAG):
        pretrained = pretrain_flow(
            packed, tokenizer, params.model, params.pretrain, runs, params.experiment, force
        )
    stages = {s.stage: s for s in (ingested, cleaned, tokenizer, packed, pretrained)}
    task_files: dict[str, str] = {}
    for task_name in params.tasks:
        cfg = getattr(params, TASK_SECTIONS[task_name])
        if cfg.task != task_name:
            raise ConfigError(f"section {TASK_SECTIONS[task_name]!r} has task {cfg.task!r}, expected {task_name!r}")
        # classification keeps the plain stage names (finetune, evaluate, register); others get a suffix.
        suffix = "" if task_name == "classification" else f"_{task_name}"
        with tags(GPU_TAG):
            finetuned = finetune_flow(tokenizer, pretrained, params.model, cfg, runs, params.experiment, force)
        evaluated = evaluate_flow(finetuned, cfg, runs, force)
        stages["finetune" + suffix] = finetuned
        stages["evaluate" + suffix] = evaluated
        stages["register" + suffix] = register_flow(
            finetuned, evaluated, params.registry, runs, params.experiment, force
        )
        if compare_random_init:
            with tags(GPU_TAG):
                scratch = finetune_flow(tokenizer, None, params.model, cfg, runs, params.experiment, force)
            stages["finetune_random_init" + suffix] = scratch
            stages["evaluate_random_init" + suffix] = evaluate_flow(scratch, cfg, runs, force)
        for split in ("train", "dev", "eval"):
            path = getattr(cfg, f"{split}_path")
            if path:
                task_files[f"{task_name}_{split}" if suffix else split] = path
    if params.registry.register_lm and params.model.family == "decoder" and params.pretrain.objective == "clm":
        stages["register_lm"] = register_lm_flow(
            pretrained, tokenizer, params.registry, runs, params.experiment, force
        )
    record_stages(parent, stages, task_files)
    summary = _summary(stages)
    logger.info("pipeline summary: %s", json.dumps(summary["headline"]))
    create_markdown_artifact(
        key="plm-pipeline-summary", markdown=_markdown(summary), description="Pipeline run"
    )
    publish_run_artifacts(summary)
    return summary


@flow(name="tokenizer-refresh", log_prints=True)
def tokenizer_refresh(params: PipelineParams) -> dict[str, str]:
    """Ingest, clean and tokenizer only (the weekly deployment): a corpus that changed since the
    last run gets a new tokenizer; an unchanged one is a cache hit for all three stages."""
    runs = str(Path(params.runs_dir).resolve())
    ingested = ingest_flow(params.ingest, runs, params.force)
    cleaned = clean_flow(ingested, params.clean, runs, params.force)
    tokenizer = tokenizer_flow(cleaned, params.tokenizer, runs, params.force)
    return {s.stage: s.path for s in (ingested, cleaned, tokenizer)}


def _summary(stages: dict[str, StageRef]) -> dict[str, Any]:
    counts = {name: read_manifest(ref.path)["counts"] for name, ref in stages.items()}
    headline: dict[str, Any] = {
        "pretrain_first_loss": counts["pretrain"].get("first_loss"),
        "pretrain_final_loss": counts["pretrain"].get("final_loss"),
    }
    for name, c in counts.items():
        if name.startswith("evaluate"):
            # evaluate -> dev_accuracy (classification); evaluate_random_init_ner -> ner_f1_random_init
            task_name, metric = c.get("task", "classification"), c.get("headline", "accuracy")
            key = "dev_accuracy" if task_name == "classification" else f"{task_name}_{metric}"
            if "random_init" in name:
                key += "_random_init"
            headline[key] = c.get(metric)
            if task_name == "qa" and "exact_match" in c:
                headline[key.replace("_f1", "_exact_match")] = c["exact_match"]
        elif name.startswith("register"):
            key = "registered" if name == "register" else f"registered{name[len('register'):]}"
            headline[key] = f"models:/{c.get('model_name')}/{c.get('version')}"
            headline[key.replace("registered", "aliases")] = c.get("aliases")
    return {"headline": headline, "stages": {k: v.path for k, v in stages.items()}, "counts": counts}


def _markdown(summary: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary["headline"].items())
    stages = "\n".join(f"| {k} | `{v}` |" for k, v in summary["stages"].items())
    return f"# plm-pipeline run\n\n| figure | value |\n|---|---|\n{rows}\n\n| stage | output |\n|---|---|\n{stages}\n"
