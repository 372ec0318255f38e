"""The stage contract of DESIGN.md section 2: one output directory per stage, a manifest.json in it,
and atomic appearance.

A stage body writes into a temporary sibling directory; only after every file is written and
fsynced does the directory get renamed to its final name, so a killed run never leaves a
half-written stage output under its final name, and the next run of the stage deletes the
temporary directory a killed run left behind. The manifest's ``digest`` covers only content
(file hashes), not timestamps or code versions, so downstream cache keys change exactly when the
bytes a stage produced change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class StageRef:
    """What flows pass between tasks: where a stage's output lives and the digest of its content."""

    stage: str
    path: str
    digest: str


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def params_digest(*parts: Any) -> str:
    """Stable digest of parameters (dataclasses, dicts, strings) for cache keys and directory names."""

    def norm(x: Any) -> Any:
        if is_dataclass(x) and not isinstance(x, type):
            return asdict(x)
        if hasattr(x, "model_dump"):
            return x.model_dump(mode="json")
        return x

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def code_version() -> str:
    """The git sha of the checkout, or 'unknown' outside a git tree (recorded, never hashed)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def content_digest(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(sorted(files.items()))).encode()).hexdigest()


def read_manifest(stage_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(stage_dir) / MANIFEST).read_text())


def is_complete(stage_dir: str | Path) -> bool:
    return (Path(stage_dir) / MANIFEST).is_file()


def ref_of(stage_dir: str | Path) -> StageRef:
    m = read_manifest(stage_dir)
    return StageRef(stage=m["stage"], path=str(Path(stage_dir).resolve()), digest=m["digest"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_siblings(out: Path) -> list[Path]:
    """Delete what killed runs left beside ``out``: ``.<name>.tmp-<pid>-<hex>`` directories whose
    process is gone, and ``.<name>.old-<hex>`` trash. Return what was removed.

    A live process's temporary directory is left alone, so two runs of the same stage can overlap
    without one deleting the other's work (the pid check assumes one host per runs directory).
    """
    removed = []
    for p in out.parent.glob(f".{out.name}.*"):
        kind, _, rest = p.name[len(out.name) + 2 :].partition("-")
        pid = rest.partition("-")[0]
        stale = kind == "old" or (kind == "tmp" and not (pid.isdigit() and _pid_alive(int(pid))))
        if stale and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def run_stage(
    stage: str,
    out_dir: str | Path,
    body: Callable[[Path], Mapping[str, Any]],
    *,
    params: Any = None,
    inputs: Mapping[str, str] | None = None,
) -> StageRef:
    """Run ``body(tmp_dir)`` and publish its directory atomically with a manifest.

    ``body`` returns the stage's counts/metrics (a JSON-able mapping). On any exception the
    temporary directory is removed and nothing appears under ``out_dir``.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.time()
    try:
        counts = dict(body(tmp))
        files = file_hashes(tmp)
        manifest = {
            "stage": stage,
            "code_version": code_version(),
            "params": json.loads(json.dumps(params, default=_jsonable)),
            "inputs": dict(inputs or {}),
            "counts": counts,
            "files": files,
            "digest": content_digest(files),
            "seconds": round(time.time() - started, 3),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        _fsync_tree(tmp)
        if out.exists():
            # An older output under the same content-addressed name: replace it whole.
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StageRef(stage=stage, path=str(out), digest=manifest["digest"])


def _jsonable(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return asdict(x)
    if hasattr(x, "model_dump"):
        return x.model_dump(mode="json")
    return str(x)
