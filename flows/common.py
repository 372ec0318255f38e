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

from plm_core.stage import StageRef, is_complete, params_digest

STAGE_CACHE = INPUTS + TASK_SOURCE
# JSON, not pickle: results are read back from disk on a cache hit (DESIGN: no pickles from disk).
TASK_DEFAULTS: dict[str, Any] = dict(cache_policy=STAGE_CACHE, persist_result=True, result_serializer="json")


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
    state = task.with_options(refresh_cache=refresh)(out_dir=str(out_dir), return_state=True, **kwargs)
    ref = to_ref(state.result())
    if state.name == "Cached":
        logger.info("%s: reused cached output %s (digest %s)", ref.stage, ref.path, ref.digest[:12])
    else:
        logger.info("%s: wrote %s (digest %s)", ref.stage, ref.path, ref.digest[:12])
    return ref
