"""MLflow registration of fine-tuned classifiers with a champion/candidate gate.

Every registered version gets alias ``candidate``; ``champion`` moves to it only when it beats the
current champion on the gate metric (higher is better), or when there is no champion yet. The
metric values are stored as version tags (``eval_<metric>``) so the gate compares against what
the champion scored when it was registered, not against a run that may since have been deleted.
A champion without that tag cannot be beaten and keeps its alias: a human chose it.

The model is logged as "models from code" (``serving/classifier_pyfunc.py``) with ``plm_core``
as a code path and the classifier directory as an artifact, so ``models:/<name>@champion`` loads
anywhere the pinned requirements are installed, without this repository.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from plm_core.errors import ConfigError
from plm_core.serving.classifier import TEXT_COLUMN, ClassifierPredictor, predictions_frame

CANDIDATE = "candidate"
CHAMPION = "champion"
PACKAGE_DIR = Path(__file__).resolve().parent
PYFUNC_FILE = PACKAGE_DIR / "serving" / "classifier_pyfunc.py"
SERVING_PACKAGES = ("torch", "sentencepiece", "safetensors", "pandas", "numpy", "pyarrow")
EXAMPLE_TEXTS = ["a charming and often affecting journey .", "unflinchingly bleak and desperate"]


def pinned_requirements() -> list[str]:
    """``pkg==version`` for what the served model imports (mlflow adds itself).

    Local version labels such as ``+cpu`` are dropped: they name a wheel index, and the serving
    machine picks its own build (CPU or CUDA) of the same release.
    """
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in SERVING_PACKAGES]


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    champion_version: str | None


def decide_promotion(client: MlflowClient, model_name: str, gate_metric: str, value: float) -> GateDecision:
    """Compare ``value`` with the current champion's ``eval_<gate_metric>`` version tag."""
    aliases = client.get_registered_model(model_name).aliases
    champion = aliases.get(CHAMPION)
    if champion is None:
        return GateDecision(True, "no champion yet", None)
    tag = client.get_model_version(model_name, str(champion)).tags.get(f"eval_{gate_metric}")
    if tag is None:
        return GateDecision(False, f"champion v{champion} has no eval_{gate_metric} tag", str(champion))
    best = float(tag)
    if value > best:
        return GateDecision(
            True, f"{gate_metric} {value:.4f} > champion v{champion} {best:.4f}", str(champion)
        )
    return GateDecision(False, f"{gate_metric} {value:.4f} <= champion v{champion} {best:.4f}", str(champion))


@contextlib.contextmanager
def _run(run_id: str | None, experiment_id: str) -> Iterator[mlflow.ActiveRun]:
    """The given run (reused if it is already active, resumed otherwise) or a new one."""
    active = mlflow.active_run()
    if run_id is not None and active is not None and active.info.run_id == run_id:
        yield active
        return
    kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {"experiment_id": experiment_id}
    with mlflow.start_run(nested=active is not None, **kwargs) as run:
        yield run


def log_and_register_classifier(
    model_dir: Path,
    *,
    tracking_uri: str,
    experiment_id: str,
    model_name: str,
    eval_metrics: dict[str, float],
    gate_metric: str = "accuracy",
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log the classifier directory as a pyfunc, register it, set ``candidate``, gate ``champion``."""
    if gate_metric not in eval_metrics:
        raise ConfigError(f"gate metric {gate_metric!r} is not among the eval metrics {sorted(eval_metrics)}")
    model_dir = Path(model_dir).resolve()
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    example = pd.DataFrame({TEXT_COLUMN: EXAMPLE_TEXTS})
    signature = infer_signature(example, predictions_frame(ClassifierPredictor(model_dir), example))
    metric_tags = {f"eval_{k}": repr(float(v)) for k, v in eval_metrics.items()}

    with _run(run_id, experiment_id) as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_FILE),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(PACKAGE_DIR)],
            signature=signature,
            input_example=example,
            pip_requirements=pinned_requirements(),
        )
        registered = mlflow.register_model(
            info.model_uri, model_name, tags={**(tags or {}), **metric_tags, "gate_metric": gate_metric}
        )
        version_id = str(registered.version)
        decision = decide_promotion(client, model_name, gate_metric, float(eval_metrics[gate_metric]))
        client.set_registered_model_alias(model_name, CANDIDATE, version_id)
        if decision.promote:
            client.set_registered_model_alias(model_name, CHAMPION, version_id)
        mlflow.log_metrics({f"eval_{k}": float(v) for k, v in eval_metrics.items()})
        mlflow.set_tags(
            {
                **(tags or {}),
                "registry.model_name": model_name,
                "registry.version": version_id,
                "registry.gate_metric": gate_metric,
                "registry.promoted": str(decision.promote).lower(),
                "registry.decision": decision.reason,
                "registry.previous_champion": decision.champion_version or "",
            }
        )
        run_id = run.info.run_id

    return {
        "model_name": model_name,
        "version": version_id,
        "run_id": run_id,
        "aliases": [CANDIDATE, CHAMPION] if decision.promote else [CANDIDATE],
        "promoted": decision.promote,
        "model_uri": f"models:/{model_name}/{version_id}",
    }
