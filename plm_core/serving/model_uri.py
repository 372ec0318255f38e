"""A fine-tuned model directory from a local path or an MLflow model URI.

``plm eval --model models:/plm-conll-ner@champion`` evaluates what the registry serves: the URI is
downloaded once into the run directory, and the directory the pyfunc carries as its ``model_dir``
artifact (model.safetensors + config.json + tokenizer/) is located inside it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from plm_core.errors import InputError

URI_SCHEMES = ("models:/", "runs:/")


def _model_dirs(root: Path) -> list[Path]:
    """Our model directories below ``root``; an HF export beside them has no ``task`` key."""
    found = []
    for cfg in root.rglob("config.json"):
        if (cfg.parent / "model.safetensors").is_file() and "task" in json.loads(cfg.read_text()):
            found.append(cfg.parent)
    return sorted(found)


def resolve_model_dir(ref: str, download_root: Path, tracking_uri: str | None = None) -> Path:
    """``ref`` as a local directory, or the model directory inside the MLflow model ``ref``."""
    if not ref.startswith(URI_SCHEMES):
        path = Path(ref)
        if not (path / "config.json").is_file():
            raise InputError(path, "not a model directory (no config.json)")
        return path
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    target = Path(download_root) / hashlib.sha256(ref.encode()).hexdigest()[:16]
    if not _model_dirs(target):
        target.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(target))
        except Exception as err:  # MLflow raises its own exception types for missing names/aliases
            raise InputError(ref, f"cannot be downloaded from MLflow: {err}") from err
    found = _model_dirs(target)
    if len(found) != 1:
        raise InputError(ref, f"holds {len(found)} model directories, expected exactly one")
    return found[0]
