"""Ordered parallel map over shard tasks: a local process pool, or Ray tasks on a cluster.

The data stages cut their work into small tasks (a Parquet path and a row-group index) and need
the results back in task order, so that only the parent writes and the bytes on disk do not depend
on the number of workers or on which worker finished first. Locally that is ``Pool.imap``; with
``RAY_ADDRESS`` set the same functions run as Ray tasks (workers on other hosts read the shards
from shared storage themselves), with a bounded window of tasks in flight so results never pile
up in the driver.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from plm_core.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")
BACKENDS = ("auto", "process", "ray")
# Tasks kept in flight per worker on Ray: enough to hide scheduling latency, few enough that
# finished-but-not-yet-consumed results stay small.
_RAY_WINDOW_PER_WORKER = 2
_initialized: dict[str, Any] = {}


def resolve_backend(backend: str) -> str:
    """``auto`` means Ray when the user pointed us at a cluster (``RAY_ADDRESS``), else processes."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "ray" if os.environ.get("RAY_ADDRESS") else "process"
    return backend


def ordered_map(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    backend: str = "auto",
) -> Iterator[R]:
    """``map(fn, tasks)`` in task order, on ``workers`` processes or Ray tasks.

    ``fn`` and ``initializer`` must be module-level functions (they are pickled by reference).
    ``initializer(*initargs)`` runs once per worker process before its first task. One worker with
    the process backend runs in this process: no spawn cost, and profilers see the work.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    kind = resolve_backend(backend)
    if kind == "ray":
        yield from _ray_map(fn, tasks, workers, initializer, initargs)
    elif workers == 1 or len(tasks) <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, tasks)
    else:
        # spawn: a forked copy of a parent that already runs threads (Ray, Prefect) can deadlock.
        # A spawned worker needs ~0.5 s to import its modules before its first task; this process
        # runs the first task meanwhile instead of waiting (worth ~5% of a 2-worker pack).
        with mp.get_context("spawn").Pool(min(workers, len(tasks) - 1), initializer, initargs) as pool:
            rest = pool.imap(fn, tasks[1:])
            if initializer is not None:
                initializer(*initargs)
            yield fn(tasks[0])
            yield from rest


def _run_initialized(
    fn: Callable[[T], R], task: T, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]
) -> R:
    """Body of a Ray task: run the initializer once per worker process and argument set."""
    if initializer is not None:
        key = f"{initializer.__module__}.{initializer.__qualname__}{initargs!r}"
        if _initialized.get("key") != key:
            initializer(*initargs)
            _initialized["key"] = key
    return fn(task)


def _ray_map(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    workers: int,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> Iterator[R]:
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=2)(_run_initialized)
    pending: deque[Any] = deque()
    window = workers * _RAY_WINDOW_PER_WORKER
    for task in tasks:
        pending.append(remote.remote(fn, task, initializer, initargs))
        if len(pending) >= window:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())
