"""resolve_pretrained: a model directory by path, or a pretrain run by MLflow run id (sqlite MLflow
in tmp), with one-line errors for everything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError, InputError
from plm_core.models import BertForMaskedLM
from plm_core.models.io import save_model
from plm_core.tracking import ensure_experiment
from plm_core.train.pretrained import resolve_pretrained

TINY = ModelConfig(
    vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position=16
)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    out = tmp_path / "pretrain"
    save_model(BertForMaskedLM(TINY), TINY, out, extra={"task": "mlm"})
    (out / "metrics.json").write_text("{}")
    return out


@pytest.fixture
def tracking(tmp_path: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, ensure_experiment(uri, "test", tmp_path)


def test_a_directory_resolves_to_itself(model_dir: Path):
    assert resolve_pretrained(str(model_dir)) == model_dir.resolve()


def test_a_directory_without_a_model_is_an_input_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="missing model.safetensors, config.json"):
        resolve_pretrained(str(tmp_path / "empty"))


def test_a_run_id_downloads_the_model_artifact(model_dir: Path, tracking, tmp_path: Path):
    uri, exp = tracking
    client = MlflowClient(uri)
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(model_dir), "model")
    got = resolve_pretrained(run_id, uri, cache_dir=tmp_path / "cache")
    assert got != model_dir.resolve() and got.is_relative_to(tmp_path / "cache")
    assert (got / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert resolve_pretrained(f"runs:/{run_id}", uri, cache_dir=tmp_path / "cache") == got  # cached
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [run_id]  # no temporary left behind


def test_run_id_errors(tracking, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    uri, exp = tracking
    client = MlflowClient(uri)
    bare = client.create_run(exp).info.run_id
    with pytest.raises(InputError, match="has no 'model' artifact"):
        resolve_pretrained(bare, uri, cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match="no such MLflow run"):
        resolve_pretrained("0" * 32, uri, cache_dir=tmp_path / "cache")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="no tracking URI"):
        resolve_pretrained(bare)
    with pytest.raises(InputError, match="neither a pretrained model directory nor an MLflow run id"):
        resolve_pretrained(str(tmp_path / "nowhere"))


def test_the_cli_turns_a_run_id_into_a_stage_ref(model_dir: Path, tmp_path: Path, monkeypatch):
    """`plm finetune --pretrained <run id>`: the pretrain flow logs the whole stage directory
    (manifest included) as the model artifact, so the download is a stage with the same digest."""
    from flows.cli import _pretrained_ref
    from plm_core.stage import ref_of, run_stage
    from plm_core.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    stage = run_stage("pretrain", runs / "stages" / "pretrain" / "x", lambda d: _copy(model_dir, d))
    uri = tracking_uri(runs)
    client = MlflowClient(uri)
    run_id = client.create_run(ensure_experiment(uri, "plm-pipeline", runs)).info.run_id
    client.log_artifacts(run_id, stage.path, "model")
    ref = _pretrained_ref(run_id, runs)
    assert ref.digest == stage.digest and Path(ref.path).is_relative_to(runs / "pretrained")
    assert _pretrained_ref(stage.path, runs) == ref_of(stage.path)


def _copy(src: Path, dst: Path) -> dict:
    import shutil

    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    return {"files": len(list(src.iterdir()))}
