"""Production deployments: the nightly pipeline and the weekly tokenizer refresh on a work pool.

``python -m flows.deploy --pool plm-pool`` (against ``PREFECT_API_URL``) creates the work pool if it
is missing, the tag concurrency limit that keeps GPU stages from piling onto one device, and the
deployments with their cron schedules and full default parameters (so the UI's custom-run form
opens pre-filled with a runnable configuration). A worker then runs them:
``prefect worker start --pool plm-pool``.

Deployments use a module-path entrypoint (``flows.pipeline.pipeline``): the worker imports the
installed package, so the same deployment runs from a checkout (process pool) or from the project
image (Kubernetes pool, ``--pool-type kubernetes --base-job-template infra/k8s/prefect-work-pool.json``)
without a code-storage step.

``--write-prefect-yaml infra/prefect.yaml`` writes the same deployments in ``prefect deploy`` form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.params import PipelineParams, build_params

NIGHTLY_CRON = "0 2 * * *"
WEEKLY_CRON = "0 3 * * 0"
GPU_TAG = "gpu"


@dataclass(frozen=True)
class DeploySpec:
    """One deployment: which flow, when, with which defaults."""

    flow_entrypoint: str  # module path, e.g. "flows.pipeline.pipeline"
    name: str
    description: str
    cron: str | None = None
    interval_seconds: float | None = None
    concurrency_limit: int | None = 1  # a nightly run that overruns queues the next one, never doubles up
    tags: tuple[str, ...] = ("plm",)


def default_specs(nightly_cron: str = NIGHTLY_CRON, weekly_cron: str = WEEKLY_CRON) -> list[DeploySpec]:
    return [
        DeploySpec(
            "flows.pipeline.pipeline",
            "nightly",
            "Whole pipeline every night: new data reruns only the stages that depend on it.",
            cron=nightly_cron,
            tags=("plm", "nightly"),
        ),
        DeploySpec(
            "flows.pipeline.tokenizer_refresh",
            "weekly-tokenizer",
            "Re-ingest and re-clean the corpus and retrain the tokenizer when the data changed.",
            cron=weekly_cron,
            tags=("plm", "weekly"),
        ),
    ]


def deployment_parameters(params: PipelineParams) -> dict[str, Any]:
    """JSON-ready defaults of a deployment of either flow (both take ``params``)."""
    return {"params": params.model_dump(mode="json")}


def _flow(entrypoint: str):
    import importlib

    module, _, attr = entrypoint.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _schedules(spec: DeploySpec) -> list:
    from prefect.schedules import Cron, Interval

    if spec.interval_seconds:
        return [Interval(timedelta(seconds=spec.interval_seconds))]
    return [Cron(spec.cron, timezone="UTC")] if spec.cron else []


def ensure_work_pool(name: str, pool_type: str = "process", base_job_template: dict | None = None) -> None:
    """Create the work pool unless it exists (an existing pool is left as it is)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            kwargs: dict[str, Any] = {"name": name, "type": pool_type}
            if base_job_template:
                kwargs["base_job_template"] = base_job_template
            client.create_work_pool(WorkPoolCreate(**kwargs))


def ensure_gpu_limit(slots: int, tag: str = GPU_TAG) -> None:
    """At most ``slots`` task runs tagged ``tag`` (pretrain, finetune) run at once, across all runs."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=slots)


def deploy(
    params: PipelineParams,
    pool: str,
    specs: list[DeploySpec] | None = None,
    *,
    create_pool: bool = True,
    pool_type: str = "process",
    base_job_template: dict | None = None,
    gpu_slots: int | None = 1,
) -> dict[str, str]:
    """Create or update the deployments; returns ``{"<flow>/<deployment>": id}``."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import EntrypointType

    specs = specs or default_specs()
    if create_pool:
        ensure_work_pool(pool, pool_type, base_job_template)
    if gpu_slots:
        ensure_gpu_limit(gpu_slots)
    runner_deployments = []
    for spec in specs:
        flow = _flow(spec.flow_entrypoint)
        runner_deployments.append(
            flow.to_deployment(
                name=spec.name,
                description=spec.description,
                schedules=_schedules(spec),
                parameters=deployment_parameters(params),
                tags=list(spec.tags),
                concurrency_limit=ConcurrencyLimitConfig(limit=spec.concurrency_limit)
                if spec.concurrency_limit
                else None,
                entrypoint_type=EntrypointType.MODULE_PATH,
                work_pool_name=pool,
            )
        )
    # RunnerDeployment.apply is what `prefect.deploy` does per deployment once images are built; it
    # is called directly because prefect 3.8.8's sync `deploy` sends an invalid worker query (422).
    return {f"{d.flow_name}/{d.name}": str(d.apply(work_pool_name=pool)) for d in runner_deployments}


def prefect_yaml(params: PipelineParams, pool: str, specs: list[DeploySpec] | None = None) -> dict[str, Any]:
    """The deployments in ``prefect deploy --prefect-file`` form (entrypoints as file paths, run from
    the project root, which is /app in the image)."""
    deployments = []
    for spec in specs or default_specs():
        flow = _flow(spec.flow_entrypoint)
        module, _, attr = spec.flow_entrypoint.rpartition(".")
        entry: dict[str, Any] = {
            "name": spec.name,
            "description": spec.description,
            "entrypoint": f"{module.replace('.', '/')}.py:{attr}",
            "flow_name": flow.name,
            "tags": list(spec.tags),
            "work_pool": {"name": pool},
            "schedules": [
                {"interval": spec.interval_seconds} if spec.interval_seconds else {"cron": spec.cron, "timezone": "UTC"}
            ],
            "parameters": deployment_parameters(params),
        }
        if spec.concurrency_limit:
            entry["concurrency_limit"] = spec.concurrency_limit
        deployments.append(entry)
    return {
        "name": "plm-pipeline",
        "prefect-version": "3.8",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}],
        "deployments": deployments,
    }


PRODUCTION_DATA_DIR = Path("/data")  # where docker-compose.yml and the k8s job template mount the data
PRODUCTION_RUNS_DIR = "/app/runs"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def main(
    pool: Annotated[str, typer.Option(help="Work pool the deployments run on.")] = "plm-pool",
    preset: Annotated[str, typer.Option(help="Size preset of the default parameters.")] = "tiny",
    sets: Annotated[list[str] | None, typer.Option("--set", help="SECTION.FIELD=VALUE override.")] = None,
    data_dir: Annotated[Path, typer.Option(help="Data folder as the worker sees it.")] = PRODUCTION_DATA_DIR,
    runs_dir: Annotated[str, typer.Option(help="Run directory as the worker sees it.")] = PRODUCTION_RUNS_DIR,
    nightly_cron: Annotated[str, typer.Option(help="Cron (UTC) of the pipeline.")] = NIGHTLY_CRON,
    weekly_cron: Annotated[str, typer.Option(help="Cron (UTC) of the tokenizer refresh.")] = WEEKLY_CRON,
    gpu_slots: Annotated[int, typer.Option(help="Concurrent GPU-tagged tasks (0: no limit).")] = 1,
    pool_type: Annotated[str, typer.Option(help="Type of a pool that does not exist yet.")] = "process",
    base_job_template: Annotated[
        Path | None, typer.Option(help="Job template of a new pool, e.g. infra/k8s/prefect-work-pool.json.")
    ] = None,
    write_prefect_yaml: Annotated[
        Path | None, typer.Option(help="Write prefect.yaml here instead of calling the API.")
    ] = None,
) -> None:
    """Create the work pool, the GPU concurrency limit and the scheduled deployments."""
    params = build_params(preset, sets, data_dir=data_dir, runs_dir=runs_dir)
    specs = default_specs(nightly_cron, weekly_cron)
    if write_prefect_yaml is not None:
        import yaml

        text = yaml.safe_dump(prefect_yaml(params, pool, specs), sort_keys=False, width=110)
        header = "# Generated by `python -m flows.deploy --write-prefect-yaml infra/prefect.yaml`; do not edit.\n"
        write_prefect_yaml.write_text(header + text)
        typer.echo(f"wrote {write_prefect_yaml}")
        return
    template = json.loads(base_job_template.read_text()) if base_job_template else None
    ids = deploy(params, pool, specs, pool_type=pool_type, base_job_template=template, gpu_slots=gpu_slots or None)
    typer.echo(json.dumps(ids, indent=2))


if __name__ == "__main__":
    app()
