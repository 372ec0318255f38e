"""Fixtures for the MLflow system-of-record tests: a real ``mlflow server`` on loopback, the tiny
pipeline run against it, and the registered classifier served by ``mlflow models serve``; shared by
test_mlflow_server.py and test_serving_load.py through ``conftest.py`` (session scope, so the
pipeline runs once).

The pipeline runs with ``--family decoder --tasks classification,ner,qa``: one run registers a
classifier, a NER tagger and a QA model (fine-tuned from the GPT body) and the decoder LM itself,
so every task's champion comes from one pretraining, as a user would get them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.flows.conftest import tiny_data  # noqa: F401  (the same tiny corpus and SST-2 slice)

CLASSIFIER = "plm-sst2-classifier"
LM = "plm-lm"
NER = "plm-conll-ner"
QA = "plm-squad-qa"
VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


def child_env(uri: str, home: Path) -> dict[str, str]:
    """A clean environment for a fresh process: only the tracking URI, PATH to this venv, HOME."""
    return {
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``mlflow server`` on sqlite with artifacts proxied by the server (``--serve-artifacts``)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = root / "server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=child_env("", root),
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc, log, timeout=120)
        yield {"uri": uri, "root": root, "proc": proc}
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def pipeline_on_server(
    mlflow_server: dict[str, Any],
    tiny_data: dict[str, Path],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The tiny pipeline (decoder family) with ``MLFLOW_TRACKING_URI`` pointing at the server."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.params import build_params
    from flows.pipeline import pipeline
    from tests.flows.tiny import tiny_overrides, tiny_task_overrides

    runs = tmp_path_factory.mktemp("server_runs")
    overrides = [
        *tiny_overrides(tiny_data),
        *tiny_task_overrides(tiny_data, NER, QA),
        f"registry.model_name={CLASSIFIER}",
        f"registry.lm_model_name={LM}",
    ]
    tasks = ["classification", "ner", "qa"]
    params = build_params("tiny", overrides, family="decoder", runs_dir=str(runs), tasks=tasks)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server["uri"]
    started = time.monotonic()
    try:
        with prefect_test_harness(server_startup_timeout=120):
            summary = pipeline(params)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return {"summary": summary, "runs": runs, "seconds": time.monotonic() - started, **mlflow_server}


@pytest.fixture(scope="session")
def served_classifier(pipeline_on_server: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``mlflow models serve -m models:/plm-sst2-classifier@champion --env-manager local``."""
    root = pipeline_on_server["root"]
    port = free_port()
    log = root / "serve.log"
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", f"models:/{CLASSIFIER}@champion",
        "--env-manager", "local",
        "-h", "127.0.0.1",
        "-p", str(port),
        "-w", "1",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=child_env(pipeline_on_server["uri"], root),
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", proc, log, timeout=180)
        yield {"url": url, "log": log, **pipeline_on_server}
    finally:
        _stop(proc)


def invoke(url: str, records: list[dict[str, Any]], timeout: float = 30) -> dict[str, Any]:
    """POST ``{"dataframe_records": records}`` to ``/invocations``; the decoded JSON answer."""
    body = json.dumps({"dataframe_records": records}).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())
