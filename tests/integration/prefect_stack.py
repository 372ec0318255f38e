"""The production stack for the Prefect tests, started once per session on loopback.

Postgres (Debian's ``postgresql`` server binaries, a throwaway cluster) backs the Prefect server when
installed, else sqlite; an MLflow server (sqlite metadata, proxied local artifacts); a Ray head that
the pipeline joins through ``RAY_ADDRESS``; a process work pool with one worker; and the
deployments created by ``python -m flows.deploy`` exactly as in production, with tiny sizes.
Re-exported by conftest.py so test_prefect_server.py and test_prefect_ui.py share one stack.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.flows.tiny import tiny_overrides
from tests.integration import servers

REPO = Path(__file__).resolve().parents[2]
POOL = "plm-it-pool"
log = logging.getLogger(__name__)


@dataclass
class Stack:
    root: Path
    api: str
    ui: str
    mlflow: str
    ray: str
    database: str
    env: dict[str, str]
    deployments: dict[str, str]
    overrides: list[str]
    services: dict[str, servers.Service] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=30)

    def deployment_parameters(self, name: str = "plm-pipeline/nightly") -> dict:
        with self.client() as c:
            return c.get(f"/deployments/{self.deployments[name]}").json()["parameters"]

    def start_worker(self, name: str = "worker") -> servers.Service:
        svc = servers.start_prefect_worker(POOL, self.env, self.root / "logs", name=name)
        self.services["worker"] = svc
        return svc


@pytest.fixture(scope="session")
def prefect_stack(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("prefect_stack")
    logs = root / "logs"
    started: list[tuple[servers.Service, object]] = []
    try:
        database, db_url, pg = "sqlite", None, None
        if servers.postgres_bin() is not None:
            pg = servers.start_postgres(logs)
            started.append((pg, servers.stop_postgres))
            db_url = f"postgresql+asyncpg://plm@{pg.url}/prefect"
            database = "postgres"
        else:
            log.warning("postgresql server binaries not installed: the Prefect server uses sqlite")
        # The three start in parallel: each mostly waits for its own imports (a minute under load).
        with ThreadPoolExecutor(3) as pool:
            jobs = {
                "prefect": (pool.submit(servers.start_prefect_server, root, db_url), servers.Service.stop),
                "mlflow": (pool.submit(servers.start_mlflow_server, root), servers.Service.stop),
                "ray": (pool.submit(servers.start_ray_head, logs), servers.stop_ray_head),
            }
            for future, stop in jobs.values():
                with contextlib.suppress(Exception):  # re-raised below, after recording what started
                    started.append((future.result(), stop))
            prefect, mlflow, ray = (future.result() for future, _ in jobs.values())
        env = {
            **servers.prefect_env(prefect.url, root / "client_home"),
            "MLFLOW_TRACKING_URI": mlflow.url,
            "RAY_ADDRESS": ray.url,
            **servers.RAY_TEST_ENV,
            "PYTHONUNBUFFERED": "1",
        }
        overrides = tiny_overrides(tiny_data)
        runs = root / "runs"
        cmd = [sys.executable, "-m", "flows.deploy", "--pool", POOL, "--runs-dir", str(runs),
               "--data-dir", str(tiny_data["corpus"].parent)]  # fmt: skip
        for item in overrides:
            cmd += ["--set", item]
        out = subprocess.run(cmd, env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        deployments = json.loads(out.stdout[out.stdout.index("{") :])
        stack = Stack(
            root=root, api=prefect.url, ui=prefect.extra["ui"], mlflow=mlflow.url, ray=ray.url,
            database=database, env=env, deployments=deployments, overrides=overrides,
        )  # fmt: skip
        stack.services.update(prefect=prefect, mlflow=mlflow, ray=ray, **({"postgres": pg} if pg else {}))
        try:
            stack.start_worker()
            yield stack
        finally:
            worker = stack.services.get("worker")
            if worker is not None:
                worker.stop()
    finally:
        for svc, stop in reversed(started):
            try:
                stop(svc)
            except Exception as err:  # noqa: BLE001 - stop the others regardless
                log.warning("stopping %s: %s", svc.name, err)
