"""Bad input through the CLI: one line naming the file (and line), exit code 2, no stage output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    return tmp_path / "runs"


def _ingest(corpus: Path, runs: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["ingest", "--corpus", str(corpus), "--runs-dir", str(runs)])
    return result.exit_code, result.output


def _assert_clean_failure(code: int, output: str, runs: Path, *needles: str) -> None:
    last = output.strip().splitlines()[-1]
    assert code == 2, output
    assert last.startswith("plm: error: "), last
    for needle in needles:
        assert needle in last, last
    ingest_dir = runs / "stages" / "ingest"
    leftovers = list(ingest_dir.iterdir()) if ingest_dir.exists() else []
    assert leftovers == [], leftovers


def test_missing_corpus_path(tmp_path: Path, runs: Path) -> None:
    missing = tmp_path / "nope"
    _assert_clean_failure(*_ingest(missing, runs), runs, str(missing), "does not exist")


def test_empty_corpus(tmp_path: Path, runs: Path) -> None:
    corpus = tmp_path / "empty"
    corpus.mkdir()
    (corpus / "a.txt").write_text("   \n")
    _assert_clean_failure(*_ingest(corpus, runs), runs, "empty")


def test_non_utf8_file_names_file_and_line(tmp_path: Path, runs: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "good.txt").write_text("fine text\n" * 20)
    (corpus / "bad.txt").write_bytes(b"line one\nline two \xff\xfe here\n")
    _assert_clean_failure(*_ingest(corpus, runs), runs, "bad.txt:2", "UTF-8")


def test_malformed_jsonl_names_file_and_line(tmp_path: Path, runs: Path) -> None:
    f = tmp_path / "docs.jsonl"
    f.write_text('{"text": "one"}\n{"text": "two"}\n{"text": broken\n')
    _assert_clean_failure(*_ingest(f, runs), runs, "docs.jsonl:3")


def test_exit_code_from_the_console_script(tmp_path: Path) -> None:
    """The real entry point, in its own process: non-zero exit and a one-line message last."""
    missing = tmp_path / "missing-corpus"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "ingest",
            "--corpus",
            str(missing),
            "--runs-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"plm: error: {missing}: does not exist"
