"""Where Prefect keeps its ephemeral database and result store when no server is configured.

This module must not import prefect: Prefect reads its settings (``PREFECT_HOME`` among them) once,
when it is first imported, so the variable has to be set before that import happens.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def configure_prefect_home(runs_dir: str | Path) -> None:
    """Keep Prefect's ephemeral database and result store under the run directory, so caches
    survive between ``plm run`` invocations on one machine. Only applies when no API URL is set
    and the user has not chosen a PREFECT_HOME; must run before anything imports prefect."""
    # A process that already imported prefect (a test harness, a notebook) has fixed its settings.
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return
    # The first run migrates a fresh sqlite database before the API answers; Prefect's 20 s default
    # is not enough on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if os.environ.get("PREFECT_HOME"):
        return
    home = Path(runs_dir).resolve() / ".prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
