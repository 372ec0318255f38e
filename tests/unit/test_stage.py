"""The stage contract: manifest contents, content digests, atomic publication."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plm_core.stage import MANIFEST, is_complete, params_digest, read_manifest, ref_of, run_stage, sha256_file


def _write(d: Path, text: str) -> dict:
    (d / "a.txt").write_text(text)
    (d / "sub").mkdir()
    (d / "sub" / "b.bin").write_bytes(b"\x00\x01")
    return {"records_in": 2, "records_out": 2}


def test_manifest_records_files_counts_and_inputs(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    ref = run_stage("demo", out, lambda d: _write(d, "hello"), params={"k": 1}, inputs={"up": "abc"})
    m = read_manifest(out)
    assert m["stage"] == "demo" and m["params"] == {"k": 1} and m["inputs"] == {"up": "abc"}
    assert m["counts"] == {"records_in": 2, "records_out": 2}
    assert set(m["files"]) == {"a.txt", "sub/b.bin"}
    assert m["files"]["a.txt"] == sha256_file(out / "a.txt")
    assert ref.digest == m["digest"] and ref_of(out) == ref


def test_digest_depends_on_content_only(tmp_path: Path) -> None:
    a = run_stage("demo", tmp_path / "a", lambda d: _write(d, "x"), params={"k": 1})
    b = run_stage("demo", tmp_path / "b", lambda d: _write(d, "x"), params={"k": 2})
    c = run_stage("demo", tmp_path / "c", lambda d: _write(d, "y"), params={"k": 1})
    assert a.digest == b.digest
    assert a.digest != c.digest


def test_failed_body_leaves_nothing(tmp_path: Path) -> None:
    def boom(d: Path) -> dict:
        (d / "partial.parquet").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage("demo", tmp_path / "out", boom)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_rerun_replaces_previous_output_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_stage("demo", out, lambda d: (d / "old.txt").write_text("1") and {})
    run_stage("demo", out, lambda d: (d / "new.txt").write_text("2") and {})
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "new.txt"]
    assert is_complete(out)
    assert json.loads((out / MANIFEST).read_text())["files"] == {"new.txt": sha256_file(out / "new.txt")}


def test_params_digest_is_stable_and_sensitive() -> None:
    from plm_core.config import CleanConfig

    assert params_digest(CleanConfig(), "x") == params_digest(CleanConfig(), "x")
    assert params_digest(CleanConfig(), "x") != params_digest(CleanConfig(min_chars=1), "x")
