"""Evaluate stage: the fine-tuned model on a labelled file, a JSON report, metrics to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import flow, task

from flows.common import TASK_DEFAULTS, call_stage, stage_dir
from plm_core.serving.classifier import evaluate_classification
from plm_core.stage import StageRef, read_manifest, run_stage, sha256_file
from plm_core.tracking import tracking_uri


@task(name="evaluate", **TASK_DEFAULTS)
def evaluate_task(
    finetuned: StageRef,
    data_path: str,
    data_digest: str,
    text_field: str,
    label_field: str,
    runs_dir: str,
    out_dir: str,
) -> StageRef:
    def body(d: Path) -> dict:
        report = evaluate_classification(Path(finetuned.path), Path(data_path), text_field, label_field)
        report["data_path"] = data_path
        (d / "report.json").write_text(json.dumps(report, indent=2))
        run_id = read_manifest(finetuned.path)["counts"].get("mlflow_run_id")
        if run_id:
            client = MlflowClient(tracking_uri(runs_dir))
            for key in ("accuracy", "macro_f1"):
                client.log_metric(run_id, f"eval_{key}", float(report[key]))
            client.log_artifact(run_id, str(d / "report.json"), "eval")
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "n": report["n"]}

    return run_stage(
        "evaluate",
        out_dir,
        body,
        params={"data_path": data_path, "text_field": text_field, "label_field": label_field},
        inputs={"finetune": finetuned.digest, "data": data_digest},
    )


@flow(name="evaluate")
def evaluate_flow(
    finetuned: StageRef,
    data_path: str,
    text_field: str = "sentence",
    label_field: str = "label",
    runs_dir: str = "runs",
    force: bool = False,
) -> StageRef:
    data_digest = sha256_file(data_path)
    out = stage_dir(runs_dir, "evaluate", finetuned.digest, data_digest, text_field, label_field)
    return call_stage(
        evaluate_task,
        out,
        force=force,
        finetuned=finetuned,
        data_path=data_path,
        data_digest=data_digest,
        text_field=text_field,
        label_field=label_field,
        runs_dir=runs_dir,
    )
