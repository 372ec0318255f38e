"""What every stage flow shares: the cache policy, stage directories, and the call that reuses a
finished stage.

Caching follows DESIGN.md section 2: a stage's cache key is its inputs' content digests plus its
parameters (Prefect's INPUTS + TASK_SOURCE policy, without the run id), and its output directory
is content-addressed by the same inputs. A cache hit whose directory has since been deleted is
refreshed instead of returning a path to nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.tasks import exponential_backoff

from plm_core.errors import PlmError
from plm_core.stage import StageRef, is_complete, params_digest

STAGE_CACHE = INPUTS + TASK_SOURCE
# JSON, not pickle: results are read back from disk on a cache hit (DESIGN: no pickles from disk).
TASK_DEFAULTS: dict[str, Any] = dict(cache_policy=STAGE_CACHE, persist_result=True, result_serializer="json")

# Errors that say "the input is wrong" rather than "the network or store hiccuped": never retried.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def is_transient_io_error(err: BaseException) -> bool:
    """Connection resets, timeouts, an MLflow or object store that is briefly unreachable.

    OSError covers sockets and ``requests``/``httpx`` transport errors; MLflow wraps its HTTP
    failures in MlflowException, recognised by its retry-exhausted or unavailable wording.
    """
    if isinstance(err, (PlmError, *_PERMANENT_OS_ERRORS)):
        return False
    if isinstance(err, OSError | TimeoutError):
        return True
    text = str(err)
    return type(err).__name__ == "MlflowException" and any(
        s in text for s in ("Max retries exceeded", "TEMPORARILY_UNAVAILABLE", "Connection refused", "503")
    )


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    err = state.result(raise_on_failure=False)
    return isinstance(err, BaseException) and is_transient_io_error(err)


# Every stage retries flaky I/O with exponential backoff and jitter; bad input fails at once.
STAGE_RETRIES: dict[str, Any] = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),  # 5, 10, 20 s
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
)


def stage_dir(runs_dir: str | Path, stage: str, *key_parts: Any) -> Path:
    """Content-addressed output directory: the same inputs and parameters map to the same place."""
    return Path(runs_dir).resolve() / "stages" / stage / params_digest(stage, *key_parts)[:16]


def to_ref(result: Any) -> StageRef:
    return result if isinstance(result, StageRef) else StageRef(**result)


def call_stage(task: Any, out_dir: Path, *, force: bool = False, **kwargs: Any) -> StageRef:
    """Run a cached stage task, refreshing the cache when forced or when its output is gone.

    Logs whether the stage ran or was reused, so a second ``plm run`` says what it skipped.
    """
    logger = get_run_logger()
    refresh = force or not is_complete(out_dir)
    runner = task.with_options(refresh_cache=refresh, **STAGE_RETRIES)
    state = runner(out_dir=str(out_dir), return_state=True, **kwargs)
    ref = to_ref(state.result())
    if state.name == "Cached":
        logger.info("%s: reused cached output %s (digest %s)", ref.stage, ref.path, ref.digest[:12])
    else:
        logger.info("%s: wrote %s (digest %s)", ref.stage, ref.path, ref.digest[:12])
    return ref
