"""Registration when MLflow fails: bounded retries with backoff, a clear error naming the URI, and
no half-registered version (a failed create leaves none; a failed alias deletes the version and
restores the previous aliases)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from plm_core.config import ModelConfig, TokenizerConfig
from plm_core.models.factory import classification_model
from plm_core.models.io import save_model
from plm_core.registry import CANDIDATE, CHAMPION, RegistryError, RetryPolicy, log_and_register, with_retry
from plm_core.tokenizer import train_tokenizer
from plm_core.tracking import ensure_experiment
from tests.unit.test_finetune_classification import sentiment_sentences

FAST = RetryPolicy(attempts=3, initial_delay=0.05, max_delay=0.1)
NAME = "retry-test-classifier"


def test_with_retry_backs_off_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("connection refused")
        return "ok"

    policy = RetryPolicy(attempts=4, initial_delay=1.0, max_delay=1.5, multiplier=2.0)
    assert with_retry(flaky, what="x", uri="http://h:1", policy=policy) == "ok"
    assert sleeps == [1.0, 1.5]  # exponential, capped at max_delay


def test_with_retry_gives_up_with_the_uri_and_does_not_retry_bad_requests(monkeypatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    calls = []

    def down() -> None:
        calls.append(1)
        raise OSError("unreachable")

    with pytest.raises(RegistryError, match=r"MLflow at http://h:1 failed on creating X after 3 attempts"):
        with_retry(down, what="creating X", uri="http://h:1", policy=FAST)
    assert len(calls) == 3

    def bad() -> None:
        calls.append(1)
        raise MlflowException("no", error_code=INVALID_PARAMETER_VALUE)

    calls.clear()
    with pytest.raises(MlflowException, match="no"):
        with_retry(bad, what="y", uri="u", policy=FAST)
    assert len(calls) == 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained classifier directory: registration does not care how good it is."""
    import pandas as pd

    root = tmp_path_factory.mktemp("retry")
    clean = root / "clean" / "train"
    clean.mkdir(parents=True)
    texts = [s for s, _ in sentiment_sentences(500, 0)]
    pd.DataFrame({"id": [str(i) for i in range(len(texts))], "source": "s", "text": texts}).to_parquet(
        clean / "part-00000.parquet"
    )
    out = root / "model"
    (out / "tokenizer").mkdir(parents=True)
    train_tokenizer(
        root / "clean",
        TokenizerConfig(vocab_size=64, num_sentinels=4, byte_fallback=False),
        out / "tokenizer",
    )
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=64
    )
    extra = {"task": "classification", "labels": ["negative", "positive"], "num_labels": 2, "max_len": 32}
    save_model(classification_model(cfg, 2), cfg, out, extra=extra)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_with_a_clear_error(model_dir: Path) -> None:
    # MLflow's own HTTP retries (7 by default) are left on: the probe keeps the failure bounded by ours.
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RegistryError) as err:
        log_and_register(
            model_dir,
            tracking_uri=uri,
            experiment_id="0",
            model_name=NAME,
            eval_metrics={"accuracy": 0.5},
            retry=FAST,
        )
    assert f"MLflow at {uri} failed on reaching the tracking server after 3 attempts" in str(err.value)
    assert 0.15 <= time.monotonic() - started < 30  # backed off 0.05 + 0.1 s, then gave up


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, MlflowClient]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, ensure_experiment(uri, "retry", runs_dir=tmp_path), MlflowClient(uri)


def _register(model_dir: Path, store, accuracy: float) -> dict:
    uri, exp, _ = store
    return log_and_register(
        model_dir,
        tracking_uri=uri,
        experiment_id=exp,
        model_name=NAME,
        eval_metrics={"accuracy": accuracy},
        retry=FAST,
    )


def test_failed_version_create_leaves_no_version(model_dir: Path, store, monkeypatch) -> None:
    _, _, client = store
    attempts = []

    def refuse(self, *args, **kwargs):
        attempts.append(1)
        raise MlflowException("store busy", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(MlflowClient, "create_model_version", refuse)
    with pytest.raises(RegistryError, match="failed on creating the model version after 3 attempts"):
        _register(model_dir, store, 0.6)
    assert len(attempts) == 3
    monkeypatch.undo()
    assert client.search_model_versions(f"name='{NAME}'") == []


def test_failed_alias_rolls_the_version_back(model_dir: Path, store, monkeypatch) -> None:
    _, _, client = store
    first = _register(model_dir, store, 0.6)
    assert first["version"] == "1" and first["promoted"]
    real = MlflowClient.set_registered_model_alias

    def champion_fails(self, name, alias, version):
        if alias == CHAMPION:
            raise MlflowException("lost connection", error_code=TEMPORARILY_UNAVAILABLE)
        return real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", champion_fails)
    with pytest.raises(RegistryError, match=r"v2 failed and was rolled back .*setting alias champion"):
        _register(model_dir, store, 0.9)  # better: the gate promotes, and the champion alias fails
    monkeypatch.undo()
    versions = {str(v.version) for v in client.search_model_versions(f"name='{NAME}'")}
    assert versions == {"1"}
    aliases = {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}
    assert aliases == {CANDIDATE: "1", CHAMPION: "1"}
    assert client.get_model_version(NAME, "1").tags["plm.registration"] == "complete"
    # And the next registration works normally.
    third = _register(model_dir, store, 0.9)
    assert third["version"] == "3" and third["promoted"]
