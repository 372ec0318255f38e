"""Where a registered model came from: version -> fine-tune run -> pretrain run -> tokenizer and data.

Writing side: ``log_datasets`` records a run's inputs as MLflow datasets (``log_inputs``) named
``corpus/<split>/<shard>``, ``tokenizer``, ``packed_tokens``, ``task/<split>``... whose digest is
the content sha256 (MLflow's digest column holds 36 characters, so the full sha256 is in the
dataset's source JSON as well). Reading side: ``lineage(client, name, version)`` walks

    model version --run_id--> the run that logged the model (fine-tune run; for an LM the
    pretrain run itself) --tag plm.pretrain_run_id--> the pretrain run --logged inputs-->
    tokenizer digest, corpus shard digests, packed-token digest

and returns one dict with the version's tags (data digests, code version, eval set), both runs
and their datasets. A version still tagged ``plm.registration=incomplete`` is refused: it is
the remains of a failed registration, not a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from plm_core.errors import PlmError

CONTEXT_TAG = "mlflow.data.context"
DIGEST_CHARS = 36  # MLflow's datasets.digest column width


class LineageError(PlmError):
    """A registered version whose origin cannot be followed."""


@dataclass(frozen=True)
class DatasetRecord:
    """One input of a run: a name, its content digest, where it lives, and what it was for."""

    name: str
    digest: str
    source: str
    context: str
    profile: dict[str, Any] = field(default_factory=dict)

    def entity(self) -> DatasetInput:
        return DatasetInput(
            Dataset(
                name=self.name,
                digest=self.digest[:DIGEST_CHARS],
                source_type="local",
                source=json.dumps({"uri": self.source, "sha256": self.digest}),
                profile=json.dumps(self.profile, default=str) if self.profile else None,
            ),
            tags=[InputTag(CONTEXT_TAG, self.context)],
        )


def log_datasets(client: MlflowClient, run_id: str, records: list[DatasetRecord]) -> None:
    """Log ``records`` as the run's inputs (MLflow keeps one entry per dataset and run)."""
    for i in range(0, len(records), 50):
        client.log_inputs(run_id, [r.entity() for r in records[i : i + 50]])


def run_datasets(client: MlflowClient, run_id: str) -> list[dict[str, Any]]:
    """The datasets logged as inputs of ``run_id``: name, full digest, source, context."""
    out = []
    for item in client.get_run(run_id).inputs.dataset_inputs:
        ds = item.dataset
        try:
            source = json.loads(ds.source)
        except (TypeError, ValueError):
            source = {"uri": ds.source}
        tags = {t.key: t.value for t in item.tags}
        out.append(
            {
                "name": ds.name,
                "digest": source.get("sha256", ds.digest),
                "source": source.get("uri"),
                "context": tags.get(CONTEXT_TAG),
            }
        )
    return sorted(out, key=lambda d: d["name"])


def _run_summary(client: MlflowClient, run_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    tags = run.data.tags
    return {
        "run_id": run_id,
        "name": run.info.run_name,
        "stage": tags.get("plm.stage"),
        "status": run.info.status,
        "experiment_id": run.info.experiment_id,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "code_version": tags.get("plm.code_version"),
        "tags": {k: v for k, v in tags.items() if k.startswith("plm.")},
        "metrics": dict(run.data.metrics),
        "datasets": run_datasets(client, run_id),
    }


def _by_context(datasets: list[dict[str, Any]], context: str) -> list[dict[str, Any]]:
    return [d for d in datasets if d["context"] == context]


def lineage(client: MlflowClient, model_name: str, version: str | int) -> dict[str, Any]:
    """Everything a registered version's origin is known by, walked through the tracking store."""
    mv = client.get_model_version(model_name, str(version))
    tags = dict(mv.tags)
    if tags.get("plm.registration") == "incomplete":
        raise LineageError(
            f"{model_name} v{version} is an incomplete registration (a failed one); no lineage"
        )
    if not mv.run_id:
        raise LineageError(f"{model_name} v{version} has no run id; it was not registered from a run")
    model_run = _run_summary(client, mv.run_id)
    if model_run["stage"] == "pretrain":
        pretrain_run = model_run
    else:
        pretrain_id = tags.get("plm.pretrain_run_id") or model_run["tags"].get("plm.pretrain_run_id")
        pretrain_run = _run_summary(client, pretrain_id) if pretrain_id else None
    upstream = (pretrain_run or model_run)["datasets"]
    tokenizer = _by_context(upstream, "tokenizer") or _by_context(model_run["datasets"], "tokenizer")
    return {
        "model": {
            "name": model_name,
            "version": str(mv.version),
            "aliases": list(getattr(mv, "aliases", []) or []),
            "source": mv.source,
            "status": str(mv.status),
            "tags": tags,
        },
        "run": model_run,
        "pretrain_run": pretrain_run,
        "pipeline_run_id": model_run["parent_run_id"],
        "code_version": tags.get("plm.code_version") or model_run["code_version"],
        "tokenizer": {
            "digest": tokenizer[0]["digest"] if tokenizer else tags.get("plm.tokenizer_digest"),
            "source": tokenizer[0]["source"] if tokenizer else None,
        },
        "data": {
            "corpus_shards": _by_context(upstream, "corpus_shard"),
            "packed_tokens": _by_context(upstream, "pack"),
            "task": [d for d in model_run["datasets"] if str(d["context"]).startswith("task_")],
            "task_data_digest": tags.get("plm.task_data_digest"),
            "eval_set_digest": tags.get("plm.eval_set_digest"),
        },
    }
