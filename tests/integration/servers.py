"""Start and stop the real production servers as native processes on loopback, for integration tests.

Each helper starts one server on a free 127.0.0.1 port, waits until it answers, and returns a handle
whose ``stop()`` ends exactly the processes it started (the whole process tree, found with psutil),
never every process of that kind on the machine: other test sessions may run their own Ray or
Prefect at the same time, so ``ray stop`` or ``pkill`` are not used.

The same components make up ``docker-compose.yml``: Postgres, Prefect server + process worker,
MLflow server, Ray head.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Send ``sig`` to ``pid`` and all its descendants, then SIGKILL whatever is left after ``timeout``."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


@dataclass
class Service:
    """One started process (and its children) with its log file."""

    name: str
    proc: subprocess.Popen
    log: Path
    url: str = ""
    extra: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        kill_tree(self.proc.pid, sig)
        self.proc.wait(timeout=10)


def spawn(name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None, **kw) -> Service:
    """Start ``cmd`` in its own session, stdout+stderr to ``log_dir/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    fh = log.open("ab")
    proc = subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True, **kw
    )
    fh.close()
    return Service(name, proc, log)


def wait_until(check, what: str, timeout: float, service: Service | None = None, every: float = 1.0):
    """Poll ``check()`` until it returns something truthy; fail with the service's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        if service is not None and not service.alive():
            raise RuntimeError(f"{service.name} exited ({service.proc.returncode}):\n{service.log_tail()}")
        time.sleep(every)
    tail = service.log_tail() if service else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{tail}")


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


# --- Postgres -------------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """Debian's versioned server binaries (``postgresql`` package), newest first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parent.parent.name)
    return found[-1].parent if found else None


def start_postgres(log_dir: Path, databases: tuple[str, ...] = ("prefect", "mlflow")) -> Service:
    """A throwaway cluster: initdb in a fresh directory, ``postgres`` on 127.0.0.1:<free>, trust auth.

    As root the server runs as the ``postgres`` system user (initdb refuses root); the data
    directory lives in its own /tmp folder because pytest's tmp tree is private to root.
    """
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin/pg_ctl (apt-get install postgresql)")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="plm-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres", "postgres")
    pgdata = data / "data"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(pgdata), "-U", "plm", "-A", "trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    svc = spawn(
        "postgres",
        [*as_user, str(bindir / "postgres"), "-D", str(pgdata), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(data), "-c", "fsync=off", "-c", "max_connections=200"],  # fmt: skip
        log_dir,
    )
    ready = [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "plm"]
    wait_until(lambda: subprocess.run(ready, capture_output=True).returncode == 0, "postgres", 60, svc)
    for db in databases:
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "plm", db],
            check=True,
            capture_output=True,
        )
    svc.url = f"127.0.0.1:{port}"
    svc.extra = {"port": port, "data": data}
    return svc


def stop_postgres(svc: Service) -> None:
    svc.stop(signal.SIGINT)  # "fast" shutdown
    shutil.rmtree(svc.extra["data"], ignore_errors=True)


# --- Prefect --------------------------------------------------------------------------------------


def prefect_env(api_url: str, home: Path) -> dict[str, str]:
    """What every Prefect client process of the test (worker, flow runs, CLI) shares."""
    return {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


def start_prefect_server(root: Path, database_url: str | None = None) -> Service:
    """``prefect server start`` on loopback with its UI; sqlite under ``root`` unless ``database_url``.

    The scheduler loops every 5 s (default 60) so a short-interval schedule shows runs quickly.
    """
    port = free_port()
    home = root / "server_home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "10",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_URL": "",
    }
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    svc = spawn("prefect-server", cmd, root / "logs", env)
    svc.url = f"http://127.0.0.1:{port}/api"
    svc.extra = {"ui": f"http://127.0.0.1:{port}", "database": env["PREFECT_API_DATABASE_CONNECTION_URL"]}
    wait_until(lambda: http_ok(f"{svc.url}/health"), "prefect server", 240, svc, every=2)
    return svc


def start_prefect_worker(pool: str, env: dict[str, str], log_dir: Path, name: str = "worker") -> Service:
    """``prefect worker start --pool <pool>``; ready once the server lists it ONLINE."""
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name]
    svc = spawn(f"prefect-{name}", cmd, log_dir, env)

    def online() -> bool:
        r = httpx.post(f"{env['PREFECT_API_URL']}/work_pools/{pool}/workers/filter", json={}, timeout=5)
        return any(w["name"] == name and w["status"] == "ONLINE" for w in r.json())

    wait_until(online, f"prefect worker {name}", 180, svc, every=2)
    return svc


# --- MLflow ---------------------------------------------------------------------------------------


def start_mlflow_server(root: Path, backend_uri: str | None = None) -> Service:
    """``mlflow server`` on loopback: sqlite (or ``backend_uri``) metadata, proxied local artifacts."""
    port = free_port()
    store = root / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend_uri or f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"),
    ]  # fmt: skip
    svc = spawn("mlflow-server", cmd, root / "logs")
    svc.url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{svc.url}/health"), "mlflow server", 180, svc, every=2)
    return svc


# --- Ray ------------------------------------------------------------------------------------------


# Ray 2.5x turns on token authentication for clusters started with `ray start`; a loopback test
# cluster has no other users, and every client (the flow run's driver too) would need the token.
RAY_TEST_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def start_ray_head(log_dir: Path, num_cpus: int = 4) -> Service:
    """``ray start --head --block`` with its own temp dir; ``svc.url`` is the RAY_ADDRESS to join.

    More CPUs than the machine has are declared on purpose: 2 training workers plus the Ray Train
    controller and the pack stage's tasks must fit on a 2-core CI machine (they oversubscribe).
    """
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="plmray"))  # short: Ray's unix socket paths are length-limited
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", str(num_cpus),
        "--node-ip-address", "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
        "--temp-dir", str(temp),
    ]  # fmt: skip
    svc = spawn("ray-head", cmd, log_dir, RAY_TEST_ENV)
    svc.url = f"127.0.0.1:{port}"
    svc.extra = {"temp": temp}
    status = [str(BIN / "ray"), "status", "--address", svc.url]
    wait_until(lambda: subprocess.run(status, capture_output=True, timeout=60).returncode == 0, "ray head", 180, svc, 3)
    return svc


def stop_ray_head(svc: Service) -> None:
    """End the head's process tree, then any process of this cluster that left the tree (Ray
    daemonises a few), recognised by the cluster's private temp dir in its command line."""
    svc.stop()
    temp = str(svc.extra["temp"])
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(temp in part for part in p.info["cmdline"] or []):
                kill_tree(p.info["pid"], signal.SIGKILL, timeout=5)
    shutil.rmtree(temp, ignore_errors=True)
