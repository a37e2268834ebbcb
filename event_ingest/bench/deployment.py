"""One deployment of the live stack the Dagster-driven cases (continuity, failover, scale) run against.

Everything real: mock sources as their own processes (live producers, every payload stamped
with its creation time), `dagster dev` deployments with the project's own definitions,
sensors and daemon, Postgres and Redis. Figures are taken where they happen (figures.py):

* at the sources: every request's arrival, stamped by the mock before anything else
  (``/stats?arrivals=1``) - rate, pauses, gaps under the interval;
* in Postgres: every stored event's ``ingested_at`` against the ``created_at`` in its payload
  - lag, and served ids against stored ids - nothing lost;
* in Dagster's own storage: when each `ingest` run started and ended (the handoffs);
* in /proc: CPU and memory of each group of processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from ..config import DAGSTER_DATABASE_URL_ENV, DATABASE_URL_ENV, REDIS_URL_ENV, SOURCES_ENV
from ..devstack.procs import HOST, cmdline, free_port, process_tree, signal_pid, spawn, sweep
from .services import one_row

ROOT = Path(__file__).resolve().parents[2]


class Deployment:
    """One complete deployment, as on its own server: `dagster dev` (webserver, daemon, code server,
    and the runs it launches) with its own DAGSTER_HOME and Dagster database, pointed at the shared
    events Postgres and Redis."""

    def __init__(
        self, name: str, workdir: Path, *, sources_file: Path, events_url: str, redis_url: str, dagster_url: str
    ) -> None:
        self.name = name
        self.home = workdir / f"dagster-{name}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.sources_file = sources_file
        self.events_url = events_url
        self.redis_url = redis_url
        self.dagster_url = dagster_url  # plain postgresql:// (for psycopg); Dagster gets +psycopg2
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed_at: float | None = None

    def start(self) -> None:
        shutil.copyfile(ROOT / "deploy" / "dagster.yaml", self.home / "dagster.yaml")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            SOURCES_ENV: str(self.sources_file),
            DATABASE_URL_ENV: self.events_url,
            REDIS_URL_ENV: self.redis_url,
            DAGSTER_DATABASE_URL_ENV: self.dagster_url.replace("postgresql://", "postgresql+psycopg2://", 1),
            "PYTHONUNBUFFERED": "1",
        }
        dagster = Path(sys.executable).parent / "dagster"
        log = open(self.home / "dagster.log", "ab")
        self.proc = spawn(
            [str(dagster), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", HOST, "-p", str(self.port)],
            cwd=self.home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    @property
    def started(self) -> subprocess.Popen[bytes]:
        """``dagster dev`` of this deployment, once start() ran."""
        if self.proc is None:
            raise RuntimeError(f"deployment {self.name} was not started")
        return self.proc

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.started.poll() is not None:
                raise RuntimeError(f"dagster dev of {self.name} exited; see {self.home / 'dagster.log'}")
            try:
                if (
                    httpx.post(
                        f"http://{HOST}:{self.port}/graphql", json={"query": "{ version }"}, timeout=2
                    ).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"dagster dev of {self.name} did not answer within {timeout:.0f} s")

    def pids(self) -> list[int]:
        """Every process of the deployment: dagster dev, its webserver, daemon, code servers and the
        run processes they spawned (the runs are children of a code server)."""
        if self.proc is None:
            return []
        return list(process_tree([self.proc.pid], pgid=self.proc.pid))

    def run_pids(self) -> list[int]:
        """The `ingest` run processes alone (what hosts the sources)."""
        # The code server starts each run with multiprocessing's spawn (or `dagster api execute_run`).
        return [pid for pid in self.pids() if "multiprocessing" in cmdline(pid) or "execute_run" in cmdline(pid)]

    def kill(self) -> None:
        """The whole deployment dies at once, as when its server is lost: SIGKILL, every process."""
        tree = process_tree([self.started.pid], pgid=self.started.pid)
        self.killed_at = time.time()
        for pid in tree:
            signal_pid(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is None or self.killed_at is not None:
            return
        tree = process_tree([self.proc.pid], pgid=self.proc.pid)
        signal_pid(self.proc.pid, signal.SIGINT)
        sweep(tree, self.proc.pid, wait_s=30)

    def runs(self) -> list[dict]:
        """The `ingest` runs from Dagster's own run storage: id, status, start and end (unix s)."""
        with psycopg.connect(self.dagster_url) as conn:
            rows = conn.execute(
                "SELECT run_id, status, start_time, end_time FROM runs WHERE pipeline_name = 'ingest' "
                "ORDER BY create_timestamp"
            ).fetchall()
        return [{"run_id": r[0], "status": r[1], "start": r[2], "end": r[3]} for r in rows]

    def draining(self, redis_url: str) -> set[str]:
        """Sources whose lease a live run of this deployment holds now (from the runs' heartbeats)."""
        import redis

        from ..core.worker import read_heartbeats

        client = redis.Redis.from_url(redis_url)
        try:
            beats = read_heartbeats(client, [r["run_id"] for r in self.runs() if r["status"] == "STARTED"])
        finally:
            client.close()
        return {name for beat in beats.values() for name in beat.draining}

    def event_log_rows(self) -> int:
        with psycopg.connect(self.dagster_url) as conn:
            return int(one_row(conn, "SELECT count(*) FROM event_logs")[0])
