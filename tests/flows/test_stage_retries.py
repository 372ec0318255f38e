"""Stage retries under prefect_test_harness: a transient I/O error is retried with backoff until the
stage succeeds; bad input fails on the first attempt with its message."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow, task

import flows.common as common
from flows.common import TASK_DEFAULTS, call_stage, is_transient_io_error
from plm_core.errors import InputError
from plm_core.stage import run_stage

ATTEMPTS: list[str] = []


@task(name="flaky", **TASK_DEFAULTS)
def flaky_task(mode: str, out_dir: str):
    ATTEMPTS.append(mode)
    if mode == "transient" and len(ATTEMPTS) < 3:
        raise ConnectionError("connection reset by peer (simulated)")
    if mode == "bad-input":
        raise InputError("corpus/x.jsonl", "not JSON", line=3)
    return run_stage("flaky", out_dir, lambda d: {"attempts": len(ATTEMPTS)}, params={"mode": mode})


@flow
def one_stage(mode: str, out_dir: str):
    return call_stage(flaky_task, Path(out_dir), mode=mode)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    ATTEMPTS.clear()
    monkeypatch.setitem(common.STAGE_RETRIES, "retry_delay_seconds", 0)


def test_transient_error_is_retried_until_the_stage_succeeds(tmp_path: Path) -> None:
    ref = one_stage("transient", str(tmp_path / "out"))
    assert ATTEMPTS == ["transient"] * 3
    assert ref.stage == "flaky" and (tmp_path / "out" / "manifest.json").is_file()


def test_bad_input_fails_at_once_with_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"corpus/x.jsonl:3: not JSON"):
        one_stage("bad-input", str(tmp_path / "out"))
    assert ATTEMPTS == ["bad-input"]


@pytest.mark.parametrize(
    ("err", "transient"),
    [
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError("Network is unreachable"), True),
        (FileNotFoundError("x"), False),
        (PermissionError("x"), False),
        (InputError("x", "bad"), False),
        (ValueError("x"), False),
    ],
)
def test_transient_classification(err: BaseException, transient: bool) -> None:
    assert is_transient_io_error(err) is transient
