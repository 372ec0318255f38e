"""The ephemeral Prefect database lands under the run directory, not in ~/.prefect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import sys
from flows.home import configure_prefect_home
configure_prefect_home(sys.argv[1])
import flows.common  # imports prefect, as every CLI command does
from prefect.settings import get_current_settings
print(get_current_settings().home)
"""


def test_prefect_home_is_set_before_prefect_reads_its_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "runs")],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert Path(out.stdout.strip().splitlines()[-1]) == (tmp_path / "runs" / ".prefect").resolve()
