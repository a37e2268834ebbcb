"""CPU by part: which piece of the live stack each process is, and what each part cost in a window.

An observer of the window (continuity.Observer) that classifies every process there is - the `ingest`
runs and their log capture, Dagster's daemon, webserver, code server and `dagster dev`, Postgres by
database, Redis, the sources, the harness - and accounts for its CPU in a CpuLedger (cpu.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ..devstack.procs import cmdline
from .continuity import LiveStack
from .cpu import CpuLedger, Proc, descendants
from .probes import redis_pid

# Parts in the order they are reported; the first six are the deployment's processes.
RUNS, RUN_LOGS, DAEMON, WEBSERVER, CODE_SERVER, DAGSTER_DEV = (
    "ingest runs",
    "ingest runs' log capture",
    "dagster daemon",
    "dagster webserver",
    "dagster code server",
    "dagster dev",
)
PG_EVENTS, PG_DAGSTER, PG_SERVER = "postgres: events db", "postgres: dagster db", "postgres: server"
PG_GONE = "postgres: came and went"  # backends (and autovacuum workers) that lived less than a sample
REDIS, SOURCES, HARNESS = "redis", "sources", "bench harness"
PARTS = (
    RUNS,
    RUN_LOGS,
    DAEMON,
    WEBSERVER,
    CODE_SERVER,
    DAGSTER_DEV,
    PG_EVENTS,
    PG_DAGSTER,
    PG_SERVER,
    PG_GONE,
    REDIS,
    SOURCES,
    HARNESS,
)
# Where the CPU of children reaped unseen goes (cpu.py): what the postmaster reaps is backends, what
# the code server reaps is runs, what a run reaps is its log capture.
REAPED_INTO = {PG_SERVER: PG_GONE, CODE_SERVER: RUNS, RUNS: RUN_LOGS}
NOT_THE_STACK = (SOURCES, HARNESS)
SESSIONS_SQL = (
    "SELECT datname, sessions FROM pg_stat_database WHERE datname = ANY(%s)"  # what a real deployment does not run
)


def dagster_part(command: str, parent: str | None) -> str:
    """Which piece of a `dagster dev` deployment a process is, from its command line and its parent's part."""
    if "multiprocessing.spawn" in command or "execute_run" in command:
        return RUNS  # the code server starts each run with multiprocessing's spawn
    if parent in (RUNS, RUN_LOGS):
        return RUN_LOGS  # what a run starts beside itself: `tail -F` and watch_orphans.py per log file
    if "dagster._daemon" in command or "dagster-daemon" in command:
        return DAEMON
    if "dagster_webserver" in command or "dagster-webserver" in command:
        return WEBSERVER
    if "api grpc" in command or "code-server" in command or "multiprocessing" in command:
        return CODE_SERVER  # the code server, its gRPC server, and the resource tracker multiprocessing gives it
    return parent or DAGSTER_DEV


@dataclass
class _Window:
    """What CpuByPart watches, from the window's start: the stack, and its own view into Postgres."""

    live: LiveStack
    t0: float
    pg: psycopg.Connection[Any]  # autocommit: pg_stat_activity fresh each read
    postmaster: int | None  # None: Postgres is not on this host, not counted
    databases: dict[str, str]  # database name -> part
    redis: list[int]
    sessions0: dict[str, int] = field(default_factory=dict)


def _postmaster_of(backend: int) -> int | None:
    try:
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[-1].split("?")[0]


class CpuByPart:
    """An observer of the window (continuity.Observer): every process there is, by part, in a CpuLedger."""

    def __init__(self) -> None:
        self.ledger = CpuLedger(self.classify, reaped_into=REAPED_INTO)
        self.span_s = 0.0
        self.sessions_per_s: dict[str, float] = {}
        self._parts: dict[tuple[int, int], str] = {}  # (pid, start) -> part, for the deployment's processes
        self._window: _Window | None = None

    @property
    def window(self) -> _Window:
        if self._window is None:
            raise RuntimeError("CpuByPart: the window has not started")
        return self._window

    def start(self, live: LiveStack, t0: float) -> None:
        pg: psycopg.Connection[Any] = psycopg.connect(live.events_url, autocommit=True)
        backend = pg.info.backend_pid
        databases = {_database_name(live.events_url): PG_EVENTS}
        databases.update({_database_name(u): PG_DAGSTER for u in live.dagster_urls})
        self._window = _Window(live, t0, pg, _postmaster_of(backend), databases, redis_pid(live.redis_url))
        self._window.sessions0 = self._sessions()
        self.ledger.start(t0)

    def stop(self) -> None:
        window = self.window
        self.ledger.stop()
        self.span_s = time.time() - window.t0
        sessions = self._sessions()
        self.sessions_per_s = {
            part: round((sessions.get(part, 0) - window.sessions0.get(part, 0)) / self.span_s, 2) for part in sessions
        }
        window.pg.close()

    def _sessions(self) -> dict[str, int]:
        """Sessions ever opened to our databases, by part (pg_stat_database.sessions, Postgres 14 and later):
        how many connections came and went, beside what they cost."""
        window = self.window
        rows = window.pg.execute(SESSIONS_SQL, (list(window.databases),)).fetchall()
        out: dict[str, int] = {}
        for datname, count in rows:
            out[window.databases[datname]] = out.get(window.databases[datname], 0) + int(count or 0)
        return out

    def classify(self, table: dict[int, Proc]) -> dict[int, str]:
        window = self.window
        parts: dict[int, str] = {}
        for deployment in window.live.deployments:
            if deployment.proc is None:
                continue
            for pid in descendants(table, [deployment.proc.pid], pgid=deployment.proc.pid):
                key = (pid, table[pid].start_ticks)
                if key not in self._parts:  # parents come first: a child can inherit its parent's part
                    self._parts[key] = dagster_part(cmdline(pid), parts.get(table[pid].ppid))
                parts[pid] = self._parts[key]
        for pid in descendants(table, window.live.fleet.pids):
            parts[pid] = SOURCES
        for pid in window.redis:
            parts[pid] = REDIS
        if window.postmaster is not None:
            databases = dict(window.pg.execute("SELECT pid, datname FROM pg_stat_activity").fetchall())
            ours = window.pg.info.backend_pid
            for pid in descendants(table, [window.postmaster]):
                if pid == ours:
                    parts[pid] = HARNESS
                elif databases.get(pid) is None:
                    # The postmaster, checkpointer, WAL writer, ... (no database); or a backend still
                    # connecting, whose part is corrected once it names its database.
                    parts[pid] = PG_SERVER
                elif databases[pid] in window.databases:
                    parts[pid] = window.databases[databases[pid]]
                # else: another database on a shared server, not ours to count
        for pid in descendants(table, [os.getpid()]):
            parts.setdefault(pid, HARNESS)  # this process and what it started for itself (py-spy)
        return parts

    def rows(self, requests: int) -> list[dict]:
        """Per part: CPU seconds in the window, cores, ms of CPU per request at the sources, processes seen."""
        cpu, procs = self.ledger.cpu_s(), self.ledger.processes()

        def row(part: str, seconds: float, processes: int | None) -> dict:
            return {
                "part": part,
                "cpu_s": round(seconds, 2),
                "cores": round(seconds / self.span_s, 3),
                "cpu_ms_per_request": round(1000 * seconds / requests, 3) if requests else None,
                "processes": processes,
            }

        rows = [row(p, cpu.get(p, 0.0), procs.get(p)) for p in PARTS]  # none sampled: "came and went"
        stack = sum(cpu.get(p, 0.0) for p in PARTS if p not in NOT_THE_STACK)
        rows.append(row("the stack (all but sources and harness)", stack, None))
        rows.append(row("everything", sum(cpu.values()), None))
        return rows
