"""The live stack the Dagster-driven cases (continuity, failover, scale) run against.

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

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from ..config import DAGSTER_DATABASE_URL_ENV, DATABASE_URL_ENV, REDIS_URL_ENV, SOURCES_ENV
from ..devstack.procs import (
    HOST,
    Usage,
    alive,
    cmdline,
    free_port,
    process_tree,
    signal_pid,
    spawn,
    stop_child,
    sweep,
    usage,
)
from ..mocksource.cli import command as mock_source_command
from .figures import Observed

ROOT = Path(__file__).resolve().parents[2]


def with_database(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


def create_database(server_url: str, prefix: str) -> str:
    """A fresh database on the server behind ``server_url``; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------------------ the sources


class MockFleet:
    """N mock sources, each its own process (`event-ingest mock-source`), producing live."""

    LABEL = "mock sources"

    def __init__(self, names: list[str], rate: float, workdir: Path) -> None:
        self.names = names
        self.rate = rate
        self.workdir = workdir
        self.ports = {n: free_port() for n in names}
        self.procs: dict[str, subprocess.Popen] = {}

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}/events"

    def base(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    def start(self) -> None:
        for name in self.names:
            log = open(self.workdir / f"mock-{name}.log", "ab")
            self.procs[name] = spawn(
                mock_source_command(name, self.ports[name], rate=self.rate),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        for name in self.names:
            while True:
                try:
                    if httpx.get(self.base(name) + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if self.procs[name].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mock source {name} did not start (log {self.workdir}/mock-{name}.log)")
                time.sleep(0.1)

    def reset(self) -> None:
        for name in self.names:
            httpx.post(self.base(name) + "/stats/reset", timeout=5)

    def stats(self, name: str, ids: bool = False) -> dict:
        query = "?arrivals=1" + ("&ids=1" if ids else "")
        return httpx.get(self.base(name) + "/stats" + query, timeout=30).json()

    def requests(self, name: str) -> int:
        return httpx.get(self.base(name) + "/stats", timeout=5).json()["requests"]

    def observed(self, name: str) -> Observed:
        stats = self.stats(name, ids=True)
        offset = stats["clock"]["wall"] - stats["clock"]["monotonic"]  # mock's monotonic -> wall time
        return Observed([a + offset for a in stats["arrivals"]], stats.get("served_ids", []))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def stop(self) -> None:
        for proc in self.procs.values():  # all at once, then wait for each
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            stop_child(proc, signal.SIGTERM, 10)


def write_sources(path: Path, fleet: MockFleet, runs: dict) -> None:
    lines = ["sources:"]
    for name in fleet.names:
        # Local mocks answer in milliseconds: a short timeout keeps the gate's hold (timeout + interval) short.
        lines += [f"  - name: {name}", f"    url: {fleet.url(name)}", "    timeout_s: 2"]
    lines.append("runs:")
    lines += [f"  {key}: {value}" for key, value in runs.items()]
    path.write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------------- a deployment


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
        self.proc: subprocess.Popen | None = None
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

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
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
        tree = process_tree([self.proc.pid], pgid=self.proc.pid)
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
            return conn.execute("SELECT count(*) FROM event_logs").fetchone()[0]


# ---------------------------------------------------------------------------- services


def postgres_pids(url: str) -> list[int]:
    """The Postgres server's processes (postmaster and every backend), found from a backend of ours."""
    with psycopg.connect(url) as conn:  # read /proc while our backend is alive
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return []  # not on this host
    return list(process_tree([postmaster]))


def redis_pid(url: str) -> list[int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return [pid] if Path(f"/proc/{pid}").exists() else []


# What clients send (round trips); the commands a Lua script runs inside Redis (TIME, HGET, ...) are
# counted apart by Redis and are not network calls.
CLIENT_COMMANDS = ("evalsha", "eval", "set", "get", "mget", "del", "ping", "script|load")


def redis_commands(url: str) -> tuple[int, int]:
    """(calls clients made, commands Redis executed, scripts' insides included), so far."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        total = int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()
    calls = sum(int(v["calls"]) for k, v in stats.items() if k.removeprefix("cmdstat_") in CLIENT_COMMANDS)
    return calls, total


def postgres_connections(url: str) -> int:
    """Connections to the events database right now (Dagster's own storage is another database)."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()[0]


# ---------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    at: float
    usage: dict[str, Usage]
    probes: dict[str, float]


class Sampler(threading.Thread):
    """CPU and memory of named groups of processes, and the values of ``probes``, every ``every_s`` s."""

    def __init__(self, groups: dict, probes: dict | None = None, every_s: float = 5.0) -> None:
        super().__init__(daemon=True, name="sampler")
        self.groups = groups  # name -> callable returning pids
        self.probes = probes or {}  # name -> callable returning a number
        self.every_s = every_s
        self.samples: list[Sample] = []
        self._halt = threading.Event()

    def _sample(self) -> Sample:
        values = {}
        for name, probe in self.probes.items():
            try:
                values[name] = probe()
            except Exception:  # a probe failing (a service restarting) loses one sample, not the run
                pass
        return Sample(time.time(), {name: usage(pids()) for name, pids in self.groups.items()}, values)

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(self._sample())
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.samples.append(self._sample())

    def probe_summary(self) -> dict[str, dict]:
        out = {}
        for name in self.probes:
            values = [s.probes[name] for s in self.samples if name in s.probes]
            if values:
                out[name] = {"mean": round(statistics.mean(values), 2), "max": max(values)}
        return out

    def summary(self) -> dict[str, dict]:
        """Per group: CPU as cores used over the whole window, memory (PSS and RSS) mean and max."""
        if len(self.samples) < 2:
            return {}
        first, last = self.samples[0], self.samples[-1]
        span = last.at - first.at
        out = {}
        for name in self.groups:
            pss = [s.usage[name].pss_bytes for s in self.samples]
            rss = [s.usage[name].rss_bytes for s in self.samples]
            procs = [s.usage[name].processes for s in self.samples]
            # CPU of processes that ended meanwhile is lost to this sum; sampled often, the error is small.
            cpu = sum(
                max(0.0, b.usage[name].cpu_s - a.usage[name].cpu_s) for a, b in zip(self.samples, self.samples[1:])
            )
            out[name] = {
                "cpu_cores": round(cpu / span, 3) if span else None,
                "pss_mb_mean": round(statistics.mean(pss) / 2**20, 1),
                "pss_mb_max": round(max(pss) / 2**20, 1),
                "rss_mb_max": round(max(rss) / 2**20, 1),
                "processes_max": max(procs),
            }
        return out


def wait_first_requests(fleet: MockFleet, timeout: float) -> float:
    """Until every source has been asked at least once; returns how long that took."""
    started = time.monotonic()
    deadline = started + timeout
    waiting = set(fleet.names)
    while waiting:
        waiting = {n for n in waiting if fleet.requests(n) == 0}
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no request reached {sorted(waiting)} within {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


def dump_json(obj) -> str:
    return json.dumps(obj, default=str)


def still_alive(pids: list[int]) -> list[int]:
    return [p for p in pids if alive(p)]
