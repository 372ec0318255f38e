"""MLflow runs around stage bodies, nested under one parent run per pipeline run.

``pipeline_run`` opens the parent run and publishes its id in ``PLM_MLFLOW_PARENT_RUN_ID`` (an
environment variable rather than a context variable: Prefect runs tasks in worker threads, and
every run the process creates meanwhile should nest); ``stage_run`` tags each stage's run with
``mlflow.parentRunId`` so the MLflow UI shows it under the pipeline run. ``record_stages`` runs
at the end of the pipeline: stages that have no run of their own (data stages, evaluate,
register) get a finished nested run with their manifest's parameters and counts, and every run
gets its inputs as MLflow datasets (``log_inputs``: corpus shards, tokenizer, packed tokens, task
data, each with its sha256), which is what the lineage walk (``plm_core.lineage``) reads.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from plm_core.lineage import DatasetRecord, log_datasets
from plm_core.stage import StageRef, code_version, read_manifest, sha256_file
from plm_core.tracking import ensure_experiment, tracking_uri

PARENT_ENV = "PLM_MLFLOW_PARENT_RUN_ID"
PARENT_TAG = "mlflow.parentRunId"


class StageRun:
    """A thin handle on one MLflow run that the stage body logs into."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.experiment_id = experiment_id

    def log_params(self, prefix: str, cfg: Any) -> None:
        values = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
        params = [Param(f"{prefix}.{k}", str(v)[:6000]) for k, v in values.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


def _parent_tags(client: MlflowClient, experiment_id: str) -> dict[str, str]:
    """``mlflow.parentRunId`` when a pipeline run is open in this experiment (MLflow nests only
    within one experiment)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return {}
    try:
        if client.get_run(parent).info.experiment_id != experiment_id:
            return {}
    except Exception:  # a stale id from a process that died: no nesting rather than no run
        return {}
    return {PARENT_TAG: parent, "plm.pipeline_run_id": parent}


@contextmanager
def _tracked_run(
    runs_dir: str, experiment: str, name: str, tags: dict[str, str], nest: bool
) -> Iterator[StageRun]:
    """One MLflow run around a block: FINISHED when it returns, FAILED when it raises."""
    uri = tracking_uri(runs_dir)
    exp_id = ensure_experiment(uri, experiment, runs_dir)
    client = MlflowClient(uri)
    run = client.create_run(
        exp_id,
        run_name=name,
        tags={
            "plm.code_version": code_version(),
            **(_parent_tags(client, exp_id) if nest else {}),
            **tags,
        },
    )
    handle = StageRun(client, run.info.run_id, uri, exp_id)
    try:
        yield handle
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


@contextmanager
def stage_run(
    runs_dir: str, experiment: str, name: str, tags: dict[str, str] | None = None
) -> Iterator[StageRun]:
    """The run of one stage execution, nested under the open pipeline run if there is one."""
    with _tracked_run(runs_dir, experiment, name, {"plm.stage": name, **(tags or {})}, nest=True) as run:
        yield run


@contextmanager
def pipeline_run(
    runs_dir: str, experiment: str, name: str = "plm-pipeline", tags: dict[str, str] | None = None
) -> Iterator[StageRun]:
    """The parent run of one pipeline run; stage runs created meanwhile nest under it."""
    stage_tags = {"plm.stage": "pipeline", **(tags or {})}
    with _tracked_run(runs_dir, experiment, name, stage_tags, nest=False) as run:
        previous = os.environ.get(PARENT_ENV)
        os.environ[PARENT_ENV] = run.run_id
        try:
            yield run
        finally:
            if previous is None:
                os.environ.pop(PARENT_ENV, None)
            else:
                os.environ[PARENT_ENV] = previous


# ---------------------------------------------------------------------------------------------
# Datasets and runs of the stages, recorded once the pipeline has them all


def _stage_dataset(ref: StageRef, name: str, context: str) -> DatasetRecord:
    manifest = read_manifest(ref.path)
    return DatasetRecord(
        name=name,
        digest=ref.digest,
        source=ref.path,
        context=context,
        profile={"stage": ref.stage, "files": len(manifest.get("files", {})), "counts": _scalars(manifest)},
    )


def _scalars(manifest: dict[str, Any]) -> dict[str, Any]:
    counts = manifest.get("counts", {})
    return {k: v for k, v in counts.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}


def corpus_shards(clean: StageRef) -> list[DatasetRecord]:
    """One dataset per cleaned Parquet shard, named by split and file, digest = its sha256."""
    files = read_manifest(clean.path).get("files", {})
    return [
        DatasetRecord(
            name=f"corpus/{rel}",
            digest=sha,
            source=str(Path(clean.path) / rel),
            context="corpus_shard",
            profile={"stage": "clean", "split": rel.split("/")[0]},
        )
        for rel, sha in sorted(files.items())
        if rel.endswith(".parquet") and rel.split("/")[0] in ("train", "validation")
    ]


def task_data(paths: dict[str, str]) -> list[DatasetRecord]:
    """The fine-tuning task's files (``{"train": path, "dev": path}``), digest = sha256."""
    return [
        DatasetRecord(name=f"task/{split}", digest=sha256_file(p), source=str(p), context=f"task_{split}")
        for split, p in paths.items()
        if p and Path(p).is_file()
    ]


TASK_SUFFIXES = ("ner", "qa")


def _task_records(records: list[DatasetRecord], stage_name: str) -> list[DatasetRecord]:
    """The task files of the task a stage name ends with (``_ner``, ``_qa``; none = classification,
    whose files carry no task prefix: ``task/train``, ``task/ner_train``)."""
    suffix = next((t for t in TASK_SUFFIXES if stage_name.endswith("_" + t)), None)

    def prefix(r: DatasetRecord) -> str | None:
        split = r.name.removeprefix("task/")
        return next((t for t in TASK_SUFFIXES if split.startswith(t + "_")), None)

    return [r for r in records if prefix(r) == suffix]


def _run_id_of(ref: StageRef) -> str | None:
    return read_manifest(ref.path).get("counts", {}).get("mlflow_run_id") or None


def record_stages(
    parent: StageRun, stages: dict[str, StageRef], task_files: dict[str, str] | None = None
) -> dict[str, str]:
    """Give every stage of this pipeline run a run nested under ``parent`` (a finished record for
    stages without one; a ``plm.reused.<stage>`` parent tag for a cached stage whose run belongs
    to an earlier pipeline run), and log each run's input datasets. Returns stage -> run id."""
    client = parent.client
    tokenizer = stages.get("tokenizer")
    clean = stages.get("clean")
    shards = corpus_shards(clean) if clean else []
    tok = [_stage_dataset(tokenizer, "tokenizer", "tokenizer")] if tokenizer else []
    pack = [_stage_dataset(stages["pack"], "packed_tokens", "pack")] if "pack" in stages else []
    task = task_data(task_files or {})
    inputs: dict[str, list[DatasetRecord]] = {
        "clean": [_stage_dataset(stages["ingest"], "ingested", "ingest")] if "ingest" in stages else [],
        "tokenizer": shards,
        "pack": shards + tok,
        "pretrain": shards + tok + pack,
    }
    weights = (
        [_stage_dataset(stages["pretrain"], "pretrained_weights", "pretrain")] if "pretrain" in stages else []
    )
    run_ids: dict[str, str] = {}
    parent_tags: list[RunTag] = []
    for name, ref in stages.items():
        run_id = _run_id_of(ref)
        if run_id is None:
            run_id = _record_run(parent, name, ref)
        else:
            nested = client.get_run(run_id).data.tags.get(PARENT_TAG)
            if nested != parent.run_id:
                parent_tags.append(RunTag(f"plm.reused.{name}", run_id))
        run_ids[name] = run_id
        base = next((b for b in ("finetune", "evaluate") if name.startswith(b)), None)
        if base is not None:
            # finetune / finetune_ner / finetune_random_init_qa ...: that task's files only.
            files = _task_records(task, name)
            records = files + (
                tok + (weights if "random_init" not in name else []) if base == "finetune" else []
            )
        else:
            records = inputs.get(name, [])
        if records:
            log_datasets(client, run_id, records)
    parent_tags += [RunTag(f"plm.run.{k}", v) for k, v in run_ids.items()]
    parent_tags += [RunTag(f"plm.digest.{k}", v.digest) for k, v in stages.items()]
    client.log_batch(parent.run_id, tags=parent_tags)
    log_datasets(client, parent.run_id, shards + tok + task)
    return run_ids


def _record_run(parent: StageRun, name: str, ref: StageRef) -> str:
    """A finished run that records a stage which logs no run itself, from its manifest."""
    manifest = read_manifest(ref.path)
    client = parent.client
    run = client.create_run(
        parent.experiment_id,
        run_name=name,
        tags={
            "plm.stage": ref.stage,
            "plm.code_version": str(manifest.get("code_version", "")),
            "plm.stage_dir": ref.path,
            "plm.stage_digest": ref.digest,
            PARENT_TAG: parent.run_id,
            "plm.pipeline_run_id": parent.run_id,
        },
    )
    params = _flat_params(manifest.get("params"))
    metrics = [Metric(k, float(v), int(time.time() * 1000), 0) for k, v in _numbers(manifest).items()]
    for i in range(0, max(len(params), len(metrics)), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100], metrics=metrics[i : i + 100])
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


_METRIC_NAME = re.compile(r"[^\w\-. /]")


def _numbers(manifest: dict[str, Any]) -> dict[str, float]:
    """Numeric counts (one level of nesting flattened) under names MLflow accepts."""
    out: dict[str, float] = {}
    for k, v in manifest.get("counts", {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, dict):
            out.update({f"{k}.{kk}": float(vv) for kk, vv in v.items() if isinstance(vv, int | float)})
    if "seconds" in manifest:
        out["stage_seconds"] = float(manifest["seconds"])
    return {_METRIC_NAME.sub("_", k): v for k, v in out.items()}


def _flat_params(params: Any, prefix: str = "") -> list[Param]:
    if not isinstance(params, dict):
        return [Param(prefix or "value", json.dumps(params)[:6000])] if params is not None else []
    out: list[Param] = []
    for k, v in params.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.extend(_flat_params(v, key))
        else:
            out.append(Param(key, (v if isinstance(v, str) else json.dumps(v))[:6000]))
    return out
