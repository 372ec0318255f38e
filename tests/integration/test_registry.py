"""MLflow registration on an embedded sqlite store: aliases, the champion gate, loading from scratch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from plm_core.errors import ConfigError
from plm_core.finetune.classification import finetune_classification
from plm_core.registry import log_and_register_classifier
from plm_core.tracking import ensure_experiment, tracking_uri
from tests.unit.test_finetune_classification import TINY_MODEL, build_sentiment_task, tiny_finetune_config

pytestmark = pytest.mark.integration

MODEL_NAME = "sst2-test-classifier"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    task = build_sentiment_task(root / "task")
    cfg = tiny_finetune_config(task, epochs=1, max_train_examples=200)
    finetune_classification(task["tokenizer"], None, TINY_MODEL, cfg, root / "model")
    return root / "model"


def test_gate_metric_must_be_evaluated(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="gate metric 'accuracy'"):
        log_and_register_classifier(
            model_dir,
            tracking_uri="sqlite://",
            experiment_id="0",
            model_name=MODEL_NAME,
            eval_metrics={"f1": 0.5},
        )


def test_register_gate_and_load_champion_in_fresh_process(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    experiment_id = ensure_experiment(uri, "registry-test", runs_dir=tmp_path)
    client = MlflowClient(uri)

    def register(accuracy: float, **kwargs: object) -> dict:
        return log_and_register_classifier(
            model_dir,
            tracking_uri=uri,
            experiment_id=experiment_id,
            model_name=MODEL_NAME,
            eval_metrics={"accuracy": accuracy, "macro_f1": accuracy - 0.01},
            **kwargs,
        )

    first = register(0.80, tags={"preset": "tiny"})
    assert first["version"] == "1" and first["promoted"]
    assert first["aliases"] == ["candidate", "champion"]
    assert first["model_uri"] == f"models:/{MODEL_NAME}/1"

    existing_run = client.create_run(experiment_id).info.run_id
    second = register(0.85, run_id=existing_run)
    assert second["run_id"] == existing_run
    assert second["version"] == "2" and second["promoted"]

    third = register(0.70)
    assert third["version"] == "3" and not third["promoted"]
    assert third["aliases"] == ["candidate"]

    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(MODEL_NAME, "candidate").version) == "3"
    v1 = client.get_model_version(MODEL_NAME, "1")
    assert float(v1.tags["eval_accuracy"]) == 0.80 and v1.tags["preset"] == "tiny"
    run3 = client.get_run(third["run_id"]).data
    assert run3.tags["registry.promoted"] == "false"
    assert run3.tags["registry.previous_champion"] == "2"
    assert "0.7000 <= champion v2 0.8500" in run3.tags["registry.decision"]
    assert run3.metrics["eval_accuracy"] == 0.70

    # Self-contained: plm_core travels as a code path, the requirements are pinned.
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/2"))
    assert (local / "code" / "plm_core" / "serving" / "classifier.py").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "sentencepiece==" in requirements

    script = textwrap.dedent(
        f"""
        import json, mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/{MODEL_NAME}@champion")
        out = model.predict(pd.DataFrame({{"text": ["the film was wonderful", "awful plot"]}}))
        print(json.dumps({{"columns": list(out.columns), "labels": out["label"].tolist(),
                           "probability": out["probability"].tolist()}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["columns"] == ["label", "probability"]
    assert len(result["labels"]) == 2 and set(result["labels"]) <= {"negative", "positive"}
    assert all(0.5 <= p <= 1.0 for p in result["probability"])
