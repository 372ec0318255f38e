"""``plm ingest`` with a ``datasets`` source and no local paths: the preflight must not demand paths."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from flows.cli import app


def test_datasets_only_corpus_passes_preflight_and_ingests(tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": f"document number {i} " * 5}) + "\n" for i in range(7)))
    runs = tmp_path / "runs"
    sets = ["ingest.paths=[]", "ingest.hf_dataset=json", f"ingest.hf_data_files={json.dumps([str(data)])}"]
    args = ["ingest", "--runs-dir", str(runs)] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (stage,) = (runs / "stages" / "ingest").iterdir()
    counts = json.loads((stage / "manifest.json").read_text())["counts"]
    assert counts["records_in"] == counts["records_out"] == 7
    rows = sum(pq.read_metadata(p).num_rows for p in stage.glob("part-*.parquet"))
    assert rows == 7


def test_no_paths_and_no_dataset_is_a_one_line_error(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["ingest", "--runs-dir", str(runs), "--set", "ingest.paths=[]"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "plm: error: (no paths): no input paths and no hf_dataset given"
    assert not (runs / "stages" / "ingest").exists()
