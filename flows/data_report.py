"""``plm data report``: the data report of a run as a Prefect flow (with a markdown artifact) and
as a Typer app (``data_app``) that the main CLI mounts as ``plm data``.

Prefect reads its settings (where the ephemeral database and result cache live) when it is first
imported, and ``flows.cli`` sets them per run directory just before a command runs. ``data_app``
is imported with the CLI, so this module must not import Prefect at import time: the flow object
is built on first access (``data_report_flow``, a module attribute as any flow entrypoint expects).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from plm_core.errors import PlmError


def report_data(
    runs_dir: str = "runs", stage_dir: str | None = None, out_dir: str | None = None
) -> dict[str, Any]:
    """Counts per step, rejects by reason, dedup rate, tokens and the document-length histogram of
    the newest data run under ``runs_dir`` (or of the run ending at ``stage_dir``); the markdown
    becomes the ``data-report`` artifact of the flow run."""
    from prefect.artifacts import create_markdown_artifact

    from plm_core.data.report import build_data_report

    report = build_data_report(runs_dir, out_dir, stage_dir)
    create_markdown_artifact(key="data-report", markdown=report.markdown, description="Data stages of a run")
    return {**report.summary, "report_dir": str(report.out_dir)}


def __getattr__(name: str) -> Any:
    """``data_report_flow``: the Prefect flow around ``report_data``, created on first use."""
    if name != "data_report_flow":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from prefect import flow

    built = flow(name="data-report")(report_data)
    globals()[name] = built
    return built


data_app = typer.Typer(
    help="Data stages: reports over a run directory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@data_app.callback()
def data() -> None:
    """Data stages: reports over a run directory."""


@data_app.command()
def report(
    runs_dir: Annotated[Path, typer.Option(help="The run directory holding stages/.")] = Path("runs"),
    stage_dir: Annotated[
        Path | None,
        typer.Option(help="Report the run ending at this stage directory (default: newest pack)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write report.md/json and the PNG.")] = None,
) -> None:
    """Counts per step, rejects by reason, dedup rate, tokens, and a document-length histogram."""
    from flows.home import configure_prefect_home

    configure_prefect_home(runs_dir)
    from flows import data_report

    try:
        summary = data_report.data_report_flow(
            str(runs_dir.resolve()),
            str(stage_dir.resolve()) if stage_dir else None,
            str(out) if out else None,
        )
    except PlmError as err:
        typer.echo(f"plm: error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo((Path(summary["report_dir"]) / "report.md").read_text())
    typer.echo(json.dumps({"report_dir": summary["report_dir"], "problems": summary["problems"]}))
