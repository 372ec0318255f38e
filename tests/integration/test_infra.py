"""The production files that no test can run here (no Docker engine, no Kubernetes) are still checked:
docker-compose.yml through Debian's ``docker-compose config``, the KubeRay manifest and the Prefect
Kubernetes job template by their structure and by Prefect's own template validation and rendering,
and infra/prefect.yaml against the deployments flows/deploy.py makes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.deploy import default_specs
from flows.params import PipelineParams

REPO = Path(__file__).resolve().parents[2]
LONG_RUNNING = {"postgres", "minio", "prefect-server", "prefect-worker", "mlflow-server", "ray-head", "ray-worker"}


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install -y docker-compose); .ci/run installs it")
    out = subprocess.run(
        [exe, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_validates_with_every_service_healthchecked(compose: dict) -> None:
    services = compose["services"]
    assert set(services) >= LONG_RUNNING
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_ports_bind_loopback_only(compose: dict) -> None:
    published = [(n, p) for n, s in compose["services"].items() for p in s.get("ports", [])]
    assert published, "no ports published at all"
    for name, port in published:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", (name, port)


def test_compose_uses_one_project_image_and_reserves_gpus(compose: dict) -> None:
    services = compose["services"]
    ours = {n for n, s in services.items() if s.get("image") == "plm-pipeline:latest"}
    assert ours == {"prefect-server", "prefect-worker", "mlflow-server", "ray-head", "ray-worker"}
    for name in ours:
        assert services[name]["build"]["dockerfile"] == "infra/Dockerfile"
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    mlflow_cmd = " ".join(services["mlflow-server"]["command"]) if isinstance(
        services["mlflow-server"]["command"], list) else services["mlflow-server"]["command"]  # fmt: skip
    assert "postgresql://" in mlflow_cmd and "s3://mlflow" in mlflow_cmd
    assert services["mlflow-server"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]


def test_kuberay_cluster_has_a_gpu_worker_group() -> None:
    docs = list(yaml.safe_load_all((REPO / "infra/k8s/raycluster.yaml").read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    (gpu,) = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    mounted = {v["persistentVolumeClaim"]["claimName"] for v in gpu["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert mounted <= claims


def test_kubernetes_job_template_validates_and_renders() -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values

    template = json.loads((REPO / "infra/k8s/prefect-work-pool.json").read_text())
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    values = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    values.update(name="plm-nightly", command="prefect flow-run execute")
    rendered = apply_values(template["job_configuration"], values)
    job = rendered["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "{{" not in json.dumps(job)
    assert container["image"] == "plm-pipeline:latest"
    assert container["env"]["RAY_ADDRESS"] == "ray://plm-ray-head-svc:10001"
    assert job["metadata"]["namespace"] == "plm"


def test_prefect_yaml_matches_the_deployments_flows_deploy_makes() -> None:
    """infra/prefect.yaml is written by ``python -m flows.deploy --write-prefect-yaml``: same
    deployments, schedules and entrypoints, and parameters the flows accept (fields added since it
    was written take their defaults)."""
    spec = yaml.safe_load((REPO / "infra/prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    for want in default_specs():
        got = by_name[want.name]
        module, _, attr = want.flow_entrypoint.rpartition(".")
        assert got["entrypoint"] == f"{module.replace('.', '/')}.py:{attr}"
        assert got["schedules"] == [{"cron": want.cron, "timezone": "UTC"}]
        assert (REPO / got["entrypoint"].split(":")[0]).is_file()
        params = PipelineParams.model_validate(got["parameters"]["params"])
        assert params.runs_dir == "/app/runs"
        assert params.ingest.paths == ["/data/corpus/gutenberg"]
