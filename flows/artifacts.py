"""Prefect artifacts of a pipeline run: what the run page in the UI shows besides the logs.

- ``plm-counts``: a table artifact, one row per stage with its record counts and headline metrics;
- ``plm-mlflow``: a link to the MLflow runs (pretraining and fine-tuning) on a tracking server;
- ``plm-loss-curve``: the pretraining loss curve, as an image served by the MLflow server or, with the
  embedded sqlite tracking (no server to serve it), as a markdown artifact with the picture inline.

Artifacts are a view, not a result: failing to publish one logs a warning and never fails the run.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from plm_core.tracking import tracking_uri

# Scalar count keys shown in the table (others, like per-reason reject dicts, stay in manifest.json).
_SHOWN = (
    "records_in", "records_out", "train", "validation", "documents", "tokens", "vocab_size", "steps",
    "first_loss", "final_loss", "val_loss", "tokens_per_second", "accuracy", "f1", "exact_match",
    "version",
)  # fmt: skip


def counts_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage: its output directory name and the scalar figures its manifest counted."""
    rows = []
    for stage, counts in summary["counts"].items():
        row: dict[str, Any] = {"stage": stage, "output": Path(summary["stages"][stage]).name}
        for key in _SHOWN:
            value = counts.get(key)
            if isinstance(value, int | float | str) and not isinstance(value, bool):
                row[key] = round(value, 4) if isinstance(value, float) else value
        rows.append(row)
    return rows


def _mlflow_links(uri: str, run_ids: dict[str, str]) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    lines = ["# MLflow runs", ""]
    for stage, run_id in run_ids.items():
        exp = client.get_run(run_id).info.experiment_id
        lines.append(f"- {stage}: [{run_id}]({uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id})")
    return "\n".join(lines)


def publish_run_artifacts(summary: dict[str, Any]) -> None:
    logger = get_run_logger()
    try:
        create_table_artifact(
            key="plm-counts", table=counts_table(summary), description="Records and metrics per stage"
        )
        counts = summary["counts"]
        runs_dir = Path(summary["stages"]["pretrain"]).parents[2]
        uri = tracking_uri(runs_dir)
        run_ids = {
            s: c["mlflow_run_id"]
            for s, c in counts.items()
            if (s == "pretrain" or s.startswith("finetune")) and c.get("mlflow_run_id")
        }
        curve = Path(summary["stages"]["pretrain"]) / "loss_curve.png"
        if uri.startswith(("http://", "https://")):
            first = next(iter(run_ids.values()), None)
            if first:
                exp = _experiment_of(uri, first)
                create_link_artifact(
                    key="plm-mlflow",
                    link=f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_ids.get('finetune', first)}",
                    link_text="MLflow run",
                    description=_mlflow_links(uri, run_ids),
                )
            if "pretrain" in run_ids:
                create_image_artifact(
                    key="plm-loss-curve",
                    image_url=f"{uri.rstrip('/')}/get-artifact?path=loss_curve.png&run_uuid={run_ids['pretrain']}",
                    description="Pretraining loss",
                )
        else:
            create_markdown_artifact(
                key="plm-mlflow",
                markdown=_mlflow_links(uri, run_ids) + f"\n\nOpen with `mlflow ui --backend-store-uri {uri}`.",
            )
            if curve.is_file():
                png = base64.b64encode(curve.read_bytes()).decode()
                create_markdown_artifact(
                    key="plm-loss-curve", markdown=f"![pretraining loss](data:image/png;base64,{png})"
                )
    except Exception as err:  # noqa: BLE001 - a view must not fail the run it describes
        logger.warning("could not publish run artifacts: %s: %s", type(err).__name__, err)


def _experiment_of(uri: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_run(run_id).info.experiment_id
