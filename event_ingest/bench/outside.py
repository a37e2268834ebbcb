"""`bench scale` as an outsider measures it: sources served by a few shared processes, CPU per request by part.

    event-ingest bench scale --outside [--sources 50] [--per-process 5] [--rate 20] [--minutes 7]
                             [--run-seconds 180 --handoff-s 60]     (a handoff every 3 minutes)
                             [--run-seconds 1800]                   (no handoff in the window)
                             [--profile] [--profile-seconds 60]

With --outside the sources are not the project's mock but outside_source.py: --per-process
sources per process, one port each, every request's arrival stamped by the kernel. The rest is
the scale case as it was: `dagster dev` with the project's definitions, its sensors, daemon and
`ingest` runs, embedded Postgres and Redis (unless their URLs are set).

With or without --outside, every window also reports, beside the scale case's tables, the
window over all sources (at the sources and in Postgres), and CPU by part, from /proc (cpu.py):
the `ingest` run processes and their log capture, Dagster's daemon, webserver, code server and
`dagster dev` itself, Postgres (backends of the events database, of Dagster's, the server's own
processes, and backends that came and went between two samples), Redis, the source processes
and the bench harness - in cores and in milliseconds of CPU per request that reached a source -
with the Postgres sessions opened per second. --profile records the busiest `ingest` run process
with py-spy (profile.py) and adds the top of its profile to the output.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg

from ..config import DATABASE_URL_ENV, REDIS_URL_ENV
from ..devstack.procs import HOST, cmdline, spawn, stop_child
from . import report
from .continuity import LiveStack
from .cpu import CpuLedger, Proc, descendants
from .figures import Observed, SourceFigures, percentile
from .live import redis_pid
from .profile import Profiler, py_spy

READY_TIMEOUT_S = 60
PROFILE_AFTER_S = 10.0  # into the window: past any start-up, on a run that is draining

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outside",
        action="store_true",
        help="sources served by a few shared processes (outside_source.py), not one mock process each",
    )
    parser.add_argument(
        "--per-process", type=int, default=None, metavar="K", help="with --outside: sources per process (default 5)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy record of the busiest ingest run process")
    parser.add_argument("--profile-seconds", type=float, default=60.0, help="how long --profile records (default 60)")


def argument_error(args: argparse.Namespace) -> str | None:
    """One line for what cannot work, said before anything is started."""
    if args.per_process is not None and not args.outside:
        return "--per-process needs --outside"
    if args.per_process is not None and args.per_process < 1:
        return f"--per-process must be >= 1, got {args.per_process}"
    if args.profile and py_spy() is None:
        return "--profile needs py-spy, found neither beside this Python nor on PATH: pip install py-spy"
    if args.profile and args.profile_seconds <= 0:
        return f"--profile-seconds must be > 0, got {args.profile_seconds:g}"
    return None


# ------------------------------------------------------------------------------ the sources


class OutsideFleet:
    """The sources, ``per_process`` to a process of outside_source.py."""

    LABEL = "outside sources"

    def __init__(self, names: list[str], rate: float, workdir: Path, per_process: int = 5) -> None:
        self.names = names
        self.rate = rate
        self.workdir = workdir
        self.groups = [names[i : i + per_process] for i in range(0, len(names), per_process)]
        self.ports: dict[str, int] = {}
        self.procs: list[subprocess.Popen] = []
        self.kernel_stamped = True

    def start(self) -> None:
        for i, group in enumerate(self.groups):
            log = open(self.workdir / f"outside-{i}.log", "ab")
            self.procs.append(
                spawn(
                    [sys.executable, "-m", "event_ingest.bench.outside_source", "--rate", str(self.rate), *group],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        for i, proc in enumerate(self.procs):
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else ""
            if not line:
                raise RuntimeError(
                    f"outside source process {i} ({', '.join(self.groups[i])}) did not start within "
                    f"{READY_TIMEOUT_S} s; see {self.workdir / f'outside-{i}.log'}"
                )
            announced = json.loads(line)
            self.ports.update(announced["ports"])
            self.kernel_stamped = self.kernel_stamped and announced["kernel_stamped"]

    def base(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    def url(self, name: str) -> str:
        return self.base(name) + "/events"

    def requests(self, name: str) -> int:
        return httpx.get(self.base(name) + "/stats", timeout=5).json()["requests"]

    def observed(self, name: str) -> Observed:
        stats = httpx.get(self.base(name) + "/stats?arrivals=1", timeout=30).json()
        return Observed(
            arrivals=[app if kernel is None else kernel for kernel, app in stats["arrivals"]],
            served_ids=[i for first, last in stats["served"] for i in range(first, last + 1)],
            app_stamps=[app for _, app in stats["arrivals"]],
        )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            stop_child(proc, signal.SIGTERM, 10)


# ------------------------------------------------------------------------------ CPU by part


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


class CpuByPart:
    """An observer of the window (continuity.Observer): every process there is, by part, in a CpuLedger."""

    def __init__(self) -> None:
        self.ledger: CpuLedger | None = None
        self.live: LiveStack | None = None
        self.span_s = 0.0
        self._t0 = 0.0
        self._parts: dict[tuple[int, int], str] = {}  # (pid, start) -> part, for the deployment's processes
        self._pg: psycopg.Connection | None = None
        self._postmaster: int | None = None
        self._databases: dict[str, str] = {}
        self._redis: list[int] = []
        self._sessions0: dict[str, int] = {}
        self.sessions_per_s: dict[str, float] = {}

    def start(self, live: LiveStack, t0: float) -> None:
        self.live, self._t0 = live, t0
        self._pg = psycopg.connect(live.events_url, autocommit=True)  # autocommit: pg_stat_activity fresh each read
        backend = self._pg.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            self._postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            self._postmaster = None  # Postgres is not on this host: not counted
        name = lambda url: url.rsplit("/", 1)[-1].split("?")[0]  # noqa: E731
        self._databases = {name(live.events_url): PG_EVENTS, **{name(u): PG_DAGSTER for u in live.dagster_urls}}
        self._redis = redis_pid(live.redis_url)
        self._sessions0 = self._sessions()
        self.ledger = CpuLedger(self.classify, reaped_into=REAPED_INTO)
        self.ledger.start(t0)

    def stop(self) -> None:
        self.ledger.stop()
        self.span_s = time.time() - self._t0
        sessions = self._sessions()
        self.sessions_per_s = {
            part: round((sessions.get(part, 0) - self._sessions0.get(part, 0)) / self.span_s, 2) for part in sessions
        }
        self._pg.close()

    def _sessions(self) -> dict[str, int]:
        """Sessions ever opened to our databases, by part (pg_stat_database.sessions, Postgres 14 and later):
        how many connections came and went, beside what they cost."""
        rows = self._pg.execute(SESSIONS_SQL, (list(self._databases),)).fetchall()
        out: dict[str, int] = {}
        for datname, count in rows:
            out[self._databases[datname]] = out.get(self._databases[datname], 0) + int(count or 0)
        return out

    def classify(self, table: dict[int, Proc]) -> dict[int, str]:
        parts: dict[int, str] = {}
        for deployment in self.live.deployments:
            if deployment.proc is None:
                continue
            for pid in descendants(table, [deployment.proc.pid], pgid=deployment.proc.pid):
                key = (pid, table[pid].start_ticks)
                if key not in self._parts:  # parents come first: a child can inherit its parent's part
                    self._parts[key] = dagster_part(cmdline(pid), parts.get(table[pid].ppid))
                parts[pid] = self._parts[key]
        for pid in descendants(table, self.live.fleet.pids):
            parts[pid] = SOURCES
        for pid in self._redis:
            parts[pid] = REDIS
        if self._postmaster is not None:
            databases = dict(self._pg.execute("SELECT pid, datname FROM pg_stat_activity").fetchall())
            ours = self._pg.info.backend_pid
            for pid in descendants(table, [self._postmaster]):
                if pid == ours:
                    parts[pid] = HARNESS
                elif databases.get(pid) is None:
                    # The postmaster, checkpointer, WAL writer, ... (no database); or a backend still
                    # connecting, whose part is corrected once it names its database.
                    parts[pid] = PG_SERVER
                elif databases[pid] in self._databases:
                    parts[pid] = self._databases[databases[pid]]
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


# ------------------------------------------------------------------------------ the profile


class RunProfiler:
    """An observer that, ``PROFILE_AFTER_S`` into the window, profiles the busiest `ingest` run process
    (and, when that one hands over, the busiest then) for ``seconds``."""

    def __init__(self, stem: Path, cpu: CpuByPart, seconds: float, window_s: float) -> None:
        self.stem = stem
        self.cpu = cpu
        self.seconds = min(seconds, max(5.0, window_s - PROFILE_AFTER_S - 5))
        self.profiler: Profiler | None = None
        self.summary: dict | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, live: LiveStack, t0: float) -> None:
        def busiest_run() -> int | None:
            runs = {pid for d in live.deployments for pid in d.run_pids()}
            return self.cpu.ledger.busiest(RUNS, runs)

        def later() -> None:
            if not self._halt.wait(PROFILE_AFTER_S):
                self.profiler = Profiler(self.stem, busiest_run, self.seconds, py_spy())
                self.profiler.begin()

        self._thread = threading.Thread(target=later, daemon=True, name="run-profiler")
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(30)
        if self.profiler is None:
            self.summary = {"error": f"the window ended before {PROFILE_AFTER_S:g} s: nothing profiled"}
        else:
            self.summary = self.profiler.end()


# ------------------------------------------------------------------------------ the window


class WindowWatch:
    """The scale case's window as the outside mode (and CPU by part in every mode) sees it."""

    def __init__(self, args: argparse.Namespace, out: Path, size: int) -> None:
        self.args = args
        self.cpu = CpuByPart()
        self.profiler = (
            RunProfiler(out / f"scale-{size}-profile", self.cpu, args.profile_seconds, args.minutes * 60)
            if args.profile
            else None
        )

    def options(self) -> dict:
        """measure_live's keyword arguments: the fleet, and the observers (CPU first: the profiler reads it)."""
        options: dict = {"observers": [self.cpu, *([self.profiler] if self.profiler else [])]}
        if self.args.outside:
            options["fleet_factory"] = functools.partial(OutsideFleet, per_process=self.per_process)
        return options

    @property
    def per_process(self) -> int:
        return self.args.per_process if self.args.per_process is not None else 5

    def complete(self, result: dict, figures: list[SourceFigures]) -> None:
        """Adds the window's summary, CPU by part and the profile to ``result``."""
        requests = sum(f.requests for f in figures)
        lags = [lag for f in figures for _, lag in f.lag_series]
        result["sources_from"] = (
            f"outside_source.py, {self.per_process} per process" if self.args.outside else "one mock process each"
        )
        result["services"] = (
            "from the environment (shared: Postgres server processes and Redis may carry others' load)"
            if os.environ.get(DATABASE_URL_ENV) or os.environ.get(REDIS_URL_ENV)
            else "embedded, this bench's own"
        )
        result["window"] = {
            "requests": requests,
            "ratio_mean": round(sum(f.ratio for f in figures) / len(figures), 4),
            "ratio_min": round(min(f.ratio for f in figures), 4),
            "gaps_under_200ms": sum(f.gaps_under_interval for f in figures),
            "gaps_under_200ms_app": (
                sum(f.gaps_under_interval_app or 0 for f in figures) if self.args.outside else None
            ),
            "longest_pause_s": round(max(f.longest_pause_s for f in figures), 3),
            "events": sum(f.events for f in figures),
            "lost": sum(f.lost for f in figures),
            "lag_p50_s": round(percentile(lags, 0.5), 3) if lags else None,
            "lag_p99_s": round(percentile(lags, 0.99), 3) if lags else None,
            "lag_max_s": round(max(lags), 3) if lags else None,
        }
        result["cpu_by_part"] = self.cpu.rows(requests)
        result["cpu_ledger_errors"] = self.cpu.ledger.errors[:5]
        result["postgres_sessions_opened_per_s"] = self.cpu.sessions_per_s
        if self.profiler is not None:
            result["profile"] = self.profiler.summary

    @staticmethod
    def print(result: dict) -> None:
        print(f"sources: {result['sources_from']}; services: {result['services']}")
        report.print_table([result["window"]], title="the window, all sources (at the sources and in Postgres)")
        print()
        report.print_table(result["cpu_by_part"], title="CPU by part, from /proc")
        print(
            "postgres sessions opened per s: "
            + ", ".join(
                f"{k.removeprefix('postgres: ')} {v:g}" for k, v in result["postgres_sessions_opened_per_s"].items()
            )
        )
        profile = result.get("profile")
        if profile:
            print()
            if "error" in profile:
                print(f"profile: {profile['error']}")
            else:
                print(
                    f"profile of ingest run process {', '.join(map(str, profile['pids']))} ({profile['seconds']} s, "
                    f"{profile['samples']} samples; {profile['files']['collapsed']}):"
                )
                for key in ("own", "total"):
                    report.print_table(profile[key][:10], ["percent", "samples", "function"], title=f"top 10, {key}")
