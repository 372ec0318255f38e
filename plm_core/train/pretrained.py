"""Find a pretrained model from what a user types: a pretrain stage directory or an MLflow run.

Fine-tuning (and continued pretraining) accept either form, so a model trained on one machine and
tracked on an MLflow server is usable elsewhere by its run id alone. The pretrain stage logs its
output directory as the run's ``model`` artifact (``plm_core.train.distributed.pretrain``), which
is what a run id resolves to.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from plm_core.errors import ConfigError, InputError

MODEL_ARTIFACT = "model"
MODEL_FILES = ("model.safetensors", "config.json")
_RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-f]{32})/?$")


def check_model_dir(path: Path) -> Path:
    """``path`` resolved, if it holds a saved model; else an InputError naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "not a directory")
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise InputError(path, f"not a pretrained model directory (missing {', '.join(missing)})")
    return path.resolve()


def _download(run_id: str, uri: str, cache_dir: Path) -> Path:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException as e:
        raise InputError(f"runs:/{run_id}", f"no such MLflow run at {uri} ({e.error_code})") from None
    if not client.list_artifacts(run_id, MODEL_ARTIFACT):
        raise InputError(f"runs:/{run_id}", f"has no '{MODEL_ARTIFACT}' artifact; not a pretrain run")
    target = cache_dir / run_id
    if target.is_dir():  # artifacts of a run do not change once its stage finished
        return check_model_dir(target / MODEL_ARTIFACT)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=cache_dir))
    try:
        download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT, dst_path=str(tmp), tracking_uri=uri)
        check_model_dir(tmp / MODEL_ARTIFACT)
        os.replace(tmp, target)  # atomic: a half download never looks like a cached one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return (target / MODEL_ARTIFACT).resolve()


def resolve_pretrained(ref: str, tracking_uri: str | None = None, cache_dir: Path | None = None) -> Path:
    """The local directory of pretrained model ``ref``.

    ``ref`` is a directory holding model.safetensors + config.json (a pretrain stage output), or
    an MLflow run id (32 hex digits, optionally as ``runs:/<id>``) of a pretrain run, whose
    ``model`` artifact is downloaded once into ``cache_dir`` (default: the system temp folder)
    from ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``). An existing path wins over a run id.
    """
    ref = str(ref).strip()
    if Path(ref).exists():
        return check_model_dir(Path(ref))
    match = _RUN_ID.match(ref)
    if not match:
        raise InputError(ref, "neither a pretrained model directory nor an MLflow run id")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(f"{ref} looks like an MLflow run id, but no tracking URI is set")
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "plm-pretrained"
    return _download(match.group(1), uri, cache)
