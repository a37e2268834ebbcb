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

from ..config import DATABASE_URL_ENV, REDIS_URL_ENV
from ..core.percentile import percentile
from ..devstack.procs import HOST, spawn, stop_child
from . import report
from .continuity import LiveStack
from .figures import Observed, SourceFigures
from .parts import RUNS, CpuByPart
from .profile import Profiler, py_spy

READY_TIMEOUT_S = 60
PROFILE_AFTER_S = 10.0  # into the window: past any start-up, on a run that is draining


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
            pipe = proc.stdout
            assert pipe is not None  # spawned with stdout=PIPE
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            line = pipe.readline() if ready else ""
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


# ------------------------------------------------------------------------------ the profile


class RunProfiler:
    """An observer that, ``PROFILE_AFTER_S`` into the window, profiles the busiest `ingest` run process
    (and, when that one hands over, the busiest then) for ``seconds``."""

    def __init__(self, stem: Path, cpu: CpuByPart, seconds: float, window_s: float) -> None:
        self.stem = stem
        self.cpu = cpu
        self.seconds = min(seconds, max(5.0, window_s - PROFILE_AFTER_S - 5))
        spy = py_spy()
        if spy is None:  # argument_error() said so before anything started
            raise RuntimeError("--profile needs py-spy")
        self.py_spy = spy
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
                self.profiler = Profiler(self.stem, busiest_run, self.seconds, self.py_spy)
                self.profiler.begin()

        self._thread = threading.Thread(target=later, daemon=True, name="run-profiler")
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
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
