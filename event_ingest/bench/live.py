"""The live stack the Dagster-driven cases (continuity, failover, scale) run against.

Everything real: mock sources as their own processes (live producers, every payload stamped
with its creation time), `dagster dev` deployments with the project's own definitions,
sensors and daemon, Postgres and Redis. Figures are taken where they happen:

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
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------------------- the figures


@dataclass
class SourceFigures:
    source: str
    requests: int
    ratio: float  # requests / (max rate x window)
    longest_pause_s: float
    longest_pause_at: float | None
    pause_at_kill_s: float | None  # the gap at the source that spans the kill, if one was made
    gaps_under_interval: int
    min_gap_ms: float | None
    lag_p50_s: float | None
    lag_p99_s: float | None
    lag_max_s: float | None
    events: int
    served: int
    lost: int
    gaps: list[float] = field(default_factory=list, repr=False)  # every gap at the source, s
    lag_series: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (created, lag) per event

    def row(self) -> dict:
        return {
            "source": self.source,
            "requests": self.requests,
            "ratio": round(self.ratio, 4),
            "longest_pause_s": round(self.longest_pause_s, 3),
            **({"pause_at_kill_s": round(self.pause_at_kill_s, 3)} if self.pause_at_kill_s is not None else {}),
            "lag_p50_s": self.lag_p50_s,
            "lag_p99_s": self.lag_p99_s,
            "lag_max_s": self.lag_max_s,
            "gaps_under_200ms": self.gaps_under_interval,
            "events": self.events,
            "lost": self.lost,
        }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


LAG_SQL = """
SELECT event_id, (payload->>'created_at')::float8, extract(epoch FROM ingested_at)::float8
FROM events
WHERE source = %(source)s AND (payload->>'created_at')::float8 BETWEEN %(t0)s AND %(t1)s
"""


def measure(
    fleet: MockFleet,
    events_url: str,
    t0: float,
    t1: float,
    *,
    interval_s: float = 0.2,
    max_rate: float = 5.0,
    killed_at: float | None = None,
) -> list[SourceFigures]:
    """Per source, over the window [t0, t1] (unix seconds): at the source, then in Postgres."""
    figures = []
    with psycopg.connect(events_url) as conn:
        for name in fleet.names:
            stats = fleet.stats(name, ids=True)
            offset = stats["clock"]["wall"] - stats["clock"]["monotonic"]  # mock's monotonic -> wall time
            arrivals = [a + offset for a in stats["arrivals"] if t0 <= a + offset <= t1]
            edges = [t0, *arrivals, t1]  # a pause at either end of the window counts too
            pauses = [(b - a, a) for a, b in zip(edges, edges[1:])]
            longest, longest_at = max(pauses)
            at_kill = next(
                (gap for gap, start in pauses if killed_at is not None and start <= killed_at < start + gap), None
            )
            gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
            rows = conn.execute(LAG_SQL, {"source": name, "t0": t0, "t1": t1 - 3 * interval_s}).fetchall()
            lags = [ing - created for _, created, ing in rows]
            # Read the cursor before the rows: a page served but not committed yet (in flight now, or
            # dropped by a drain that was stopped) lies above the cursor and will be fetched again by
            # the next holder - not lost. Lost is served, at or below the cursor, and not stored.
            cursor = conn.execute("SELECT cursor FROM source_state WHERE source = %s", (name,)).fetchone()
            cursor = cursor[0] if cursor else 0
            stored = {r[0] for r in conn.execute("SELECT event_id FROM events WHERE source = %s", (name,))}
            served = [i for i in stats.get("served_ids", []) if i <= cursor]
            figures.append(
                SourceFigures(
                    source=name,
                    requests=len(arrivals),
                    ratio=len(arrivals) / (max_rate * (t1 - t0)),
                    longest_pause_s=longest,
                    longest_pause_at=longest_at,
                    pause_at_kill_s=at_kill,
                    gaps_under_interval=sum(1 for g in gaps if g < interval_s),
                    min_gap_ms=round(min(gaps) * 1000, 3) if gaps else None,
                    lag_p50_s=round(statistics.median(lags), 3) if lags else None,
                    lag_p99_s=round(percentile(lags, 0.99), 3) if lags else None,
                    lag_max_s=round(max(lags), 3) if lags else None,
                    events=len(rows),
                    served=len(served),
                    lost=len(set(served) - stored),
                    gaps=gaps,
                    lag_series=[(created, ing - created) for _, created, ing in rows],
                )
            )
    return figures


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


def lag_chart(
    path: Path,
    figures: list[SourceFigures],
    *,
    t0: float,
    marks: dict[str, list[float]],
    title: str,
    max_sources: int = 12,
) -> Path:
    """Lag (event made -> row committed) over time per source, worst per second; vertical lines at
    the moments in ``marks`` (handoffs, a kill)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5), dpi=100)
    try:
        for fig_ in figures[:max_sources]:
            worst: dict[int, float] = {}
            for created, lag in fig_.lag_series:
                second = int(created - t0)
                worst[second] = max(worst.get(second, 0.0), lag)
            xs = sorted(worst)
            ax.plot(xs, [worst[x] for x in xs], linewidth=0.8, label=fig_.source)
        styles = ["--", ":", "-."]
        for i, (label, moments) in enumerate(marks.items()):
            for j, moment in enumerate(moments):
                ax.axvline(
                    moment - t0,
                    color="grey" if i == 0 else "red",
                    linestyle=styles[i % 3],
                    linewidth=0.8,
                    label=label if j == 0 else None,
                )
        ax.set_xlabel("seconds into the window")
        ax.set_ylabel("lag, s (worst event per second)")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=2, loc="upper right")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def gap_histogram(path: Path, figures: list[SourceFigures], *, title: str) -> Path:
    """Every gap between two requests at the sources, all sources together (log count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps_ms = [g * 1000 for f in figures for g in f.gaps]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if gaps_ms:
            top = max(gaps_ms)
            bins = [150 + 5 * i for i in range(int((min(top, 600) - 150) / 5) + 2)]
            if top > 600:
                bins.append(top + 1)
            ax.hist(gaps_ms, bins=bins, log=True)
        ax.axvline(200, color="red", linestyle="--", linewidth=0.8, label="200 ms rule")
        ax.set_xlabel("gap between two requests at the source, ms (last bin: all longer)")
        ax.set_ylabel("count (log)")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def dump_json(obj) -> str:
    return json.dumps(obj, default=str)


def still_alive(pids: list[int]) -> list[int]:
    return [p for p in pids if alive(p)]
