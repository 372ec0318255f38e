"""The data report over a run directory: lineage by digests, accounting checks, histogram, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from plm_core.config import CleanConfig, IngestConfig, PackConfig
from plm_core.data.clean import clean
from plm_core.data.ingest import ingest
from plm_core.data.pack import pack
from plm_core.data.report import HISTOGRAM, build_data_report, find_lineage
from plm_core.errors import InputError
from plm_core.stage import StageRef, run_stage
from plm_core.tokenizer import train_tokenizer


def _stages(
    runs: Path, corpus: Path, tokenizer_cfg, clean_cfg: CleanConfig, *, with_pack: bool = True
) -> dict:
    """The data stages as the flows lay them out: runs/stages/<stage>/<key>/ with manifests."""
    root = runs / "stages"
    key = f"k{clean_cfg.min_chars}"
    ing = run_stage("ingest", root / "ingest" / "k", lambda d: ingest(IngestConfig(paths=[str(corpus)]), d))
    cln = run_stage(
        "clean",
        root / "clean" / key,
        lambda d: clean(Path(ing.path), clean_cfg, d),
        inputs={"ingest": ing.digest},
    )
    refs: dict[str, StageRef] = {"ingest": ing, "clean": cln}
    if with_pack:
        tok = run_stage(
            "tokenizer",
            root / "tokenizer" / key,
            lambda d: train_tokenizer(Path(cln.path), tokenizer_cfg, d),
            inputs={"clean": cln.digest},
        )
        refs["tokenizer"] = tok
        refs["pack"] = run_stage(
            "pack",
            root / "pack" / key,
            lambda d: pack(Path(cln.path), Path(tok.path), PackConfig(num_workers=1), d),
            inputs={"clean": cln.digest, "tokenizer": tok.digest},
        )
    return refs


@pytest.fixture(scope="module")
def run_dir(data_run, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("report")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in data_run.texts.items():
        (corpus / f"{name}.txt").write_text(text)
    (corpus / "copy.txt").write_text(data_run.texts["doc03"])
    (corpus / "short.txt").write_text("tiny")
    runs = root / "runs"
    cfg = CleanConfig(min_chars=20, validation_fraction=0.2, num_workers=1)
    refs = _stages(runs, corpus, data_run.tokenizer_cfg, cfg)
    # A later, unfinished run in the same directory (a clean without pack) must not be mixed in.
    _stages(runs, corpus, data_run.tokenizer_cfg, CleanConfig(min_chars=30, num_workers=1), with_pack=False)
    return runs, refs


def test_lineage_follows_digests_from_the_newest_pack(run_dir: tuple[Path, dict]) -> None:
    runs, refs = run_dir
    assert find_lineage(runs) == {name: Path(ref.path) for name, ref in refs.items()}
    other_clean = runs / "stages" / "clean" / "k30"
    assert find_lineage(runs, other_clean)["clean"] == other_clean
    with pytest.raises(InputError, match="no finished data stage"):
        find_lineage(runs.parent / "empty")


def test_report_counts_rejects_tokens_and_histogram(run_dir: tuple[Path, dict], tmp_path: Path) -> None:
    runs, refs = run_dir
    report = build_data_report(runs, tmp_path / "out")
    s = report.summary
    assert s["problems"] == []
    steps = {row["step"]: row for row in s["steps"]}
    assert steps["ingest"]["in"] == steps["ingest"]["out"] == 42
    assert steps["clean"]["in"] == 42
    assert steps["clean"]["rejected"] == {"exact_duplicate": 1, "too_short": 1}
    assert steps["pack"]["in"] == steps["clean"]["out"] == 40
    assert s["dedup"]["exact_duplicates"] == 1 and 0 < s["dedup"]["rate"] < 0.1
    assert s["tokens"]["train"] > 0 and s["tokens"]["dtype"] == "uint16"
    assert s["doc_lengths"]["docs"] == 40
    png = (tmp_path / "out" / HISTOGRAM).read_bytes()
    assert png.startswith(b"\x89PNG")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| clean | 42 | 40 | 2 | exact_duplicate 1, too_short 1 |" in md
    assert "every record accounted for" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text())["steps"] == s["steps"]


def test_report_flags_broken_accounting(run_dir: tuple[Path, dict], tmp_path: Path) -> None:
    runs, refs = run_dir
    broken = tmp_path / "runs"
    import shutil

    shutil.copytree(runs, broken)
    manifest = broken / "stages" / "clean" / "k20" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["counts"]["rejected"]["too_short"] = 0
    manifest.write_text(json.dumps(m))
    problems = build_data_report(broken, tmp_path / "out").summary["problems"]
    assert problems == ["clean: 42 in != 40 out + 1 rejected"]


def test_cli_runs_the_flow_and_prints_the_report(run_dir: tuple[Path, dict], tmp_path: Path) -> None:
    """``plm data report`` through Prefect (a temporary API), and the module stays Prefect-free on import."""
    import subprocess

    probe = subprocess.run(
        [sys.executable, "-c", "import sys, flows.data_report; print('prefect' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "False", probe.stderr
    from prefect.testing.utilities import prefect_test_harness
    from typer.testing import CliRunner

    from flows.data_report import data_app

    runs, _ = run_dir
    with prefect_test_harness(server_startup_timeout=120):
        result = CliRunner().invoke(
            data_app, ["report", "--runs-dir", str(runs), "--out", str(tmp_path / "r")]
        )
        missing = CliRunner().invoke(data_app, ["report", "--runs-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 0, result.output
    assert "# Data report" in result.output and '"problems": []' in result.output
    assert (tmp_path / "r" / HISTOGRAM).is_file()
    assert missing.exit_code == 2 and "plm: error:" in missing.output
