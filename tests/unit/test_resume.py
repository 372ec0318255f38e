"""A data run killed with SIGKILL while clean writes its shards resumes: the rerun reuses the
finished ingest stage, removes the dead run's temporary directory, and produces byte-identical
outputs to a run that was never interrupted. No shard is ever visible half-written under its
final name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from plm_core.stage import read_manifest

# The data chain as the flows run it (content-addressed stage directories, a finished stage is
# reused), without Prefect so the subprocess starts in a second rather than with an API server.
DRIVER = """
import json, sys
from pathlib import Path
from plm_core.config import CleanConfig, IngestConfig
from plm_core.data.clean import clean
from plm_core.data.ingest import ingest, source_digest
from plm_core.stage import is_complete, params_digest, ref_of, run_stage

runs, corpus = Path(sys.argv[1]), sys.argv[2]
ingest_cfg = IngestConfig(paths=[corpus])
clean_cfg = CleanConfig(num_workers=1, target_shard_bytes=20_000, validation_fraction=0.1)

def stage(name, cfg, inputs, body):
    out = runs / "stages" / name / params_digest(name, cfg, *inputs.values())[:16]
    return ref_of(out) if is_complete(out) else run_stage(name, out, body, params=cfg, inputs=inputs)

ing = stage("ingest", ingest_cfg, {"raw_files": source_digest(ingest_cfg)}, lambda d: ingest(ingest_cfg, d))
cln = stage("clean", clean_cfg, {"ingest": ing.digest}, lambda d: clean(Path(ing.path), clean_cfg, d))
print(json.dumps({"ingest": ing.path, "clean": cln.path}))
"""


def _start(runs: Path, corpus: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(runs), str(corpus)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def _finish(runs: Path, corpus: Path) -> dict[str, str]:
    proc = _start(runs, corpus)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


def _hashes(stage_dir: str) -> dict[str, str]:
    return read_manifest(stage_dir)["files"]


@pytest.fixture
def corpus(tmp_path: Path, data_text: Callable[..., str]) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(300):
        (folder / f"doc{i:03d}.txt").write_text(data_text(20_000 + i, paragraphs=12))
    return folder


def test_killed_during_sharding_resumes_to_identical_outputs(tmp_path: Path, corpus: Path) -> None:
    runs = tmp_path / "runs"
    clean_root = runs / "stages" / "clean"
    proc = _start(runs, corpus)
    killed_in: Path | None = None
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        # A final stage directory appears only complete; until the kill there must be none.
        assert not [p for p in clean_root.glob("*") if not p.name.startswith(".")], (
            "clean finished before the kill"
        )
        partial = list(clean_root.glob(".*.tmp-*/train/*.parquet.tmp"))
        if partial:
            os.kill(proc.pid, signal.SIGKILL)
            killed_in = partial[0].parents[1]
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert killed_in is not None, "no temporary shard seen before the run ended"
    assert proc.returncode == -signal.SIGKILL
    assert killed_in.is_dir() and str(proc.pid) in killed_in.name
    for shard in killed_in.rglob("part-*.parquet"):  # final names inside the dead run: complete files
        pq.read_metadata(shard)
    ingest_dirs = [p for p in (runs / "stages" / "ingest").iterdir() if not p.name.startswith(".")]
    assert len(ingest_dirs) == 1
    ingest_mtime = (ingest_dirs[0] / "manifest.json").stat().st_mtime_ns

    resumed = _finish(runs, corpus)
    assert not killed_in.exists(), "the dead run's temporary directory was left behind"
    assert [p.name for p in clean_root.iterdir()] == [Path(resumed["clean"]).name]
    assert (Path(resumed["ingest"]) / "manifest.json").stat().st_mtime_ns == ingest_mtime  # reused

    fresh = _finish(tmp_path / "fresh_runs", corpus)
    for stage in ("ingest", "clean"):
        assert _hashes(resumed[stage]) == _hashes(fresh[stage]), stage
        assert read_manifest(resumed[stage])["digest"] == read_manifest(fresh[stage])["digest"]
    assert read_manifest(resumed["clean"])["counts"] == read_manifest(fresh["clean"])["counts"]
    assert len(_hashes(resumed["clean"])) > 10  # several shards were written
