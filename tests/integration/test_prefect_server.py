"""The production path against real servers: deployments made by ``flows/deploy.py`` on a Prefect
server (Postgres-backed when the server binaries are installed), runs triggered through the REST call
the UI makes, a process worker executing them against a Ray head and an MLflow server, the
registered model read back from MLflow, schedules producing runs, and a worker killed mid-run.
"""

from __future__ import annotations

import copy
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.integration import servers

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 600
STAGES = ("ingest", "clean", "tokenizer", "pack", "pretrain", "finetune", "evaluate", "register")


def trigger(stack, parameters: dict, deployment: str = "plm-pipeline/nightly") -> str:
    """What the UI's "Run" button does: POST /deployments/{id}/create_flow_run."""
    with stack.client() as c:
        r = c.post(
            f"/deployments/{stack.deployments[deployment]}/create_flow_run",
            json={"parameters": parameters, "state": {"type": "SCHEDULED", "message": "integration test"}},
        )
        r.raise_for_status()
        return r.json()["id"]


def flow_run(stack, run_id: str) -> dict:
    with stack.client() as c:
        return c.get(f"/flow_runs/{run_id}").json()


def wait_for_state(stack, run_id: str, timeout: float = RUN_TIMEOUT, expect: str = "COMPLETED") -> dict:
    """Poll until the run is final; fail with the worker's log if it did not end in ``expect``."""

    def final():
        run = flow_run(stack, run_id)
        return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    run = servers.wait_until(final, f"flow run {run_id}", timeout, every=3)
    worker = stack.services.get("worker")
    assert run["state"]["type"] == expect, (run["state"], worker.log_tail(6000) if worker else "")
    return run


def subflow_task_runs(stack, run_id: str) -> dict[str, str]:
    """Stage name -> state name of the stage task inside each sub-flow of ``run_id``."""
    with stack.client() as c:
        subs = c.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}).json()
        tasks = c.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [s["id"] for s in subs]}}}).json()
    return {t["name"].rsplit("-", 1)[0]: t["state"]["name"] for t in tasks}


def gpu_tagged_tasks(stack, run_id: str) -> set[str]:
    """Stage tasks of ``run_id`` that carry the "gpu" tag (the tag concurrency limit applies to them)."""
    with stack.client() as c:
        subs = c.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}).json()
        tasks = c.post(
            "/task_runs/filter",
            json={"flow_runs": {"id": {"any_": [s["id"] for s in subs]}}, "task_runs": {"tags": {"all_": ["gpu"]}}},
        ).json()
    return {t["name"].rsplit("-", 1)[0] for t in tasks}


def run_logs(stack, run_ids: list[str]) -> str:
    with stack.client() as c:
        subs = c.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": run_ids}}}).json()
        ids = run_ids + [s["id"] for s in subs]
        logs = c.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": ids}}, "limit": 200}).json()
    return "\n".join(entry["message"] for entry in logs)


def with_changes(params: dict, **changes: object) -> dict:
    """A copy of deployment parameters with ``section__field=value`` changes in ``params``."""
    out = copy.deepcopy(params)
    for key, value in changes.items():
        section, _, fld = key.partition("__")
        if fld:
            out["params"][section][fld] = value
        else:
            out["params"][section] = value
    return out


def test_deployments_have_schedules_parameters_and_gpu_limit(prefect_stack) -> None:
    with prefect_stack.client() as c:
        nightly = c.get(f"/deployments/{prefect_stack.deployments['plm-pipeline/nightly']}").json()
        weekly = c.get(f"/deployments/{prefect_stack.deployments['tokenizer-refresh/weekly-tokenizer']}").json()
        limits = c.post("/concurrency_limits/filter", json={}).json()
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 3 * * 0"]
    assert nightly["work_pool_name"] == weekly["work_pool_name"] == "plm-it-pool"
    assert nightly["entrypoint"] == "flows.pipeline.pipeline"
    # The form's defaults: the tiny overrides given to flows/deploy.py, and the field descriptions.
    assert nightly["parameters"]["params"]["pretrain"]["max_steps"] == 12
    schema = nightly["parameter_openapi_schema"]
    assert "Rerun every stage" in schema["definitions"]["PipelineParams"]["properties"]["force"]["description"]
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert {"tag": "gpu", "concurrency_limit": 1}.items() <= next(x for x in limits if x["tag"] == "gpu").items()


def test_run_triggered_through_the_api_registers_a_model_in_mlflow(prefect_stack) -> None:
    """Custom parameters (another registered-model name) in the UI's call; the run completes on the
    worker, pretraining joins the Ray head, and MLflow holds the registered version."""
    params = with_changes(prefect_stack.deployment_parameters(), registry__model_name="plm-it-api")
    run_id = trigger(prefect_stack, params)
    run = wait_for_state(prefect_stack, run_id)
    assert run["parameters"]["params"]["registry"]["model_name"] == "plm-it-api"
    client = MlflowClient(prefect_stack.mlflow)
    version = client.get_model_version_by_alias("plm-it-api", "candidate")
    ft_run = client.get_run(version.run_id)
    assert 0.0 <= ft_run.data.metrics["eval_accuracy"] <= 1.0
    pre = client.get_run(ft_run.data.tags["plm.pretrain_run_id"])
    assert pre.data.metrics["loss"] > 0
    # Every stage ran (nothing was cached yet) and the run published its artifacts.
    assert set(subflow_task_runs(prefect_stack, run_id).values()) == {"Completed"}
    assert gpu_tagged_tasks(prefect_stack, run_id) == {"pretrain", "finetune"}
    with prefect_stack.client() as c:
        arts = c.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    assert {"plm-pipeline-summary", "plm-counts", "plm-mlflow", "plm-loss-curve"} <= {a["key"] for a in arts}
    image = next(a for a in arts if a["key"] == "plm-loss-curve")
    assert image["type"] == "image" and pre.info.run_id in image["data"]
    png = httpx.get(image["data"], timeout=30)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_fails_the_run_with_the_file_in_its_state_message(prefect_stack, tmp_path) -> None:
    """A corpus path that does not exist: the run ends Failed (not Crashed, not retried), and the
    state message the UI shows names the path and the problem."""
    params = with_changes(
        prefect_stack.deployment_parameters(), ingest__paths=[str(tmp_path / "no-such-corpus")], runs_dir=str(tmp_path)
    )
    run = wait_for_state(prefect_stack, trigger(prefect_stack, params), expect="FAILED")
    assert "no-such-corpus" in run["state"]["message"], run["state"]
    assert not (tmp_path / "stages" / "ingest").exists() or not any((tmp_path / "stages" / "ingest").iterdir())


def test_short_interval_schedule_produces_runs(prefect_stack) -> None:
    """A 15-second interval deployment: the scheduler service creates runs 15 s apart, the worker
    picks the first up and completes it (every stage from the cache of the API-triggered run)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import DeploySpec, deploy
    from flows.params import PipelineParams

    params = PipelineParams.model_validate(prefect_stack.deployment_parameters()["params"])
    spec = DeploySpec("flows.pipeline.pipeline", "every-15s", "test schedule", interval_seconds=15)
    with temporary_settings({PREFECT_API_URL: prefect_stack.api}):
        ids = deploy(params, "plm-it-pool", [spec], create_pool=False, gpu_slots=None)
    dep_id = ids["plm-pipeline/every-15s"]
    flt = {"flow_runs": {"deployment_id": {"any_": [dep_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
    try:
        with prefect_stack.client() as c:
            runs = servers.wait_until(
                lambda: (r := c.post("/flow_runs/filter", json=flt).json()) and len(r) >= 2 and r,
                "scheduled runs", 60,
            )  # fmt: skip
        starts = [datetime.fromisoformat(r["expected_start_time"]) for r in runs]
        assert starts[1] - starts[0] == timedelta(seconds=15)
        assert all(r["auto_scheduled"] for r in runs)
        first = wait_for_state(prefect_stack, runs[0]["id"])
        assert first["parameters"]["params"]["pretrain"]["max_steps"] == 12
    finally:
        with prefect_stack.client() as c:
            c.post(f"/deployments/{dep_id}/pause_deployment")
            left = c.post("/flow_runs/filter", json=flt).json()
            for r in left:
                if r["state"]["type"] == "SCHEDULED":
                    c.delete(f"/flow_runs/{r['id']}")
            for r in left:
                if r["state"]["type"] in ("PENDING", "RUNNING"):
                    wait_for_state(prefect_stack, r["id"])


def _manifests(runs: Path) -> dict[str, int]:
    return {p.parent.parent.name: p.stat().st_mtime_ns for p in runs.glob("stages/*/*/manifest.json")}


def test_killed_worker_rerun_reuses_finished_stages(prefect_stack, tmp_path) -> None:
    """SIGKILL the worker and its flow-run process while pretraining runs (a node dying); a new
    worker's rerun takes every stage finished before the kill from the cache and redoes the rest."""
    runs = tmp_path / "runs"
    params = with_changes(prefect_stack.deployment_parameters(), runs_dir=str(runs))
    first_id = trigger(prefect_stack, params)
    servers.wait_until(
        lambda: "pack" in _manifests(runs) and flow_run(prefect_stack, first_id)["state"]["type"] == "RUNNING",
        "pack stage of the first run", RUN_TIMEOUT, every=1,
    )  # fmt: skip
    finished = _manifests(runs)
    assert "pretrain" not in finished
    worker = prefect_stack.services["worker"]
    worker.stop(signal.SIGKILL)
    with prefect_stack.client() as c:  # nobody is left to report it: mark it as the crash it was
        c.post(
            f"/flow_runs/{first_id}/set_state",
            json={"state": {"type": "CRASHED", "message": "worker killed by the test"}, "force": True},
        ).raise_for_status()
    killed_at = time.time_ns()
    prefect_stack.start_worker(name="worker-2")
    second_id = trigger(prefect_stack, params)
    wait_for_state(prefect_stack, second_id)
    after = _manifests(runs)
    for stage, mtime in finished.items():
        assert after[stage] == mtime, f"{stage} was redone"
    assert all(after[s] > killed_at for s in STAGES if s not in finished)
    states = subflow_task_runs(prefect_stack, second_id)
    assert {s: states[s] for s in finished} == dict.fromkeys(finished, "Cached")
    assert states["pretrain"] == "Completed"
    logs = run_logs(prefect_stack, [second_id])
    for stage in finished:
        assert f"{stage}: reused cached output" in logs


def test_stack_ran_on_loopback_with_the_database_it_reports(prefect_stack) -> None:
    for url in (prefect_stack.api, prefect_stack.mlflow, prefect_stack.ray):
        assert url.split("//")[-1].startswith("127.0.0.1:")
    if servers.postgres_bin() is not None:
        assert prefect_stack.database == "postgres"
        assert prefect_stack.services["prefect"].extra["database"].startswith("postgresql+asyncpg://")
