"""``event-ingest dev``: the whole system on one machine, with one command.

What it starts, in this order (and stops in the reverse order):

    Postgres     embedded (pip-installed binaries), databases ``event_ingest`` and ``dagster``,
                 unless EVENT_INGEST_DATABASE_URL is set
    Redis        embedded valkey, unless EVENT_INGEST_REDIS_URL is set
    sources      three mock sources like the original system's (3, 2 and 4 events per response,
                 20% errors) on 127.0.0.1:3001-3003, unless a sources file is given
                 (``--sources`` or EVENT_INGEST_SOURCES)
    Dagster      ``dagster dev`` (webserver, daemon, code server, runs) with DAGSTER_HOME under
                 the state dir; the per-source sensors are on by default, so events flow at once

Everything lives in the state dir (default ``./.event-ingest``), so a restart resumes where
the last run stopped::

    postgres/  redis/       server data
    dagster_home/           DAGSTER_HOME (deploy/dagster.yaml copied from the project)
    logs/                   one log per child; dagster.log is also shown on our stdout
    sources.yaml            generated when the mock sources are used
    stack.json              URLs, pids and log paths of the running stack (removed on a clean stop)
    dev.lock                held while a dev stack runs on this state dir

Every child runs in its own session (process group), so a Ctrl-C in the terminal reaches us
only and we stop the children in order; nothing is left behind, not even Dagster's run workers.

The parts, each owning its own state and handed what it needs: StateDir (statedir.py),
plan_sources -> SourcesPlan (sources.py), start_services -> ServiceUrls (services.py), MockFleet
(mockfleet.py), DagsterDev (dagster_dev.py), the reports (report.py). DevStack holds them and a
Teardown (an ExitStack, runtime.py) on which each registers its stop as it starts, so whatever
fails or is interrupted, what was started stops in reverse order.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from ..config import DAGSTER_DATABASE_URL_ENV, SOURCES_ENV, ConfigError
from ..exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from .dagster_dev import DagsterDev, project_files
from .errors import DevError
from .mockfleet import MockFleet
from .procs import HOST, port_is_free
from .report import StackView, stack_document, stack_env, summary
from .runtime import Console, Interrupted, Interrupts, Teardown
from .services import ServiceUrls, start_services
from .sources import SourcesPlan, plan_sources
from .statedir import DEFAULT_STATE_DIR, StateDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=f"state dir: server data, DAGSTER_HOME, logs (default ./{DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port (default 3000)")
    parser.add_argument(
        "--sources",
        default=None,
        metavar="FILE",
        help=f"sources file; no mock sources are started (default: ${SOURCES_ENV}, "
        "else three mock sources and a generated file)",
    )
    parser.add_argument(
        "--sources-port-base",
        type=int,
        default=3001,
        metavar="PORT",
        help="the mock sources listen on PORT, PORT+1, PORT+2 (default 3001)",
    )
    parser.add_argument(
        "--no-dagster", action="store_true", help="start Postgres, Redis and the sources only (no Dagster)"
    )
    parser.add_argument(
        "--no-mock-sources",
        action="store_true",
        help="start no mock sources (the generated sources file still lists them, for you to serve)",
    )


class DevStack:
    """The dev stack: the parts it started, and the teardown that stops them in reverse order.

    Parts, each owning its state: StateDir (the lock, stack.json), the SourcesPlan, ServiceUrls
    (from start_services: Postgres, Redis), MockFleet (the mock sources), DagsterDev (dagster dev
    and its readiness). Reports are made from a StackView snapshot (report.py)."""

    def __init__(
        self,
        args: argparse.Namespace,
        console: Console | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.args = args
        self.console = console or Console()
        self.environ = os.environ if environ is None else environ
        self.interrupts = Interrupts()
        self.teardown = Teardown()
        self.t0 = time.monotonic()
        self.started_at = time.time()
        self.state = StateDir(Path(args.data_dir or Path.cwd() / DEFAULT_STATE_DIR))
        self.sources: SourcesPlan | None = None
        self.services: ServiceUrls | None = None
        self.fleet: MockFleet | None = None
        self.dagster: DagsterDev | None = None
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        self.console.say(message)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    @property
    def started_anything(self) -> bool:
        return self.teardown.stops > 0

    # -- start

    def start(self) -> None:
        args = self.args
        for opt, port in (("--port", args.port), ("--sources-port-base", args.sources_port_base)):
            if not 1 <= port <= 65535 - (2 if opt == "--sources-port-base" else 0):
                raise DevError(f"event-ingest dev: {opt} {port} is not a usable TCP port")
        files = None if args.no_dagster else project_files()
        self.state.open()
        self.teardown.callback(self.state.close)  # last: the stack file goes once all is down
        self.state.stop_leftovers(self.say)
        sources = self.sources = plan_sources(
            args.sources, self.environ, args.no_mock_sources, args.sources_port_base, self.state.path / "sources.yaml"
        )
        self._check_ports(sources)

        services = self.services = start_services(
            self.state.path, self.state.logs, list(sources.urls), self.teardown, self.interrupts, self.say, self.environ
        )
        self.timings["services_ready_s"] = self.elapsed()
        self.interrupts.check()
        if sources.mock:
            self.fleet = MockFleet(sources.urls, args.sources_port_base, self.state.logs, self.interrupts, self.say)
            self.teardown.on_close(self.fleet.stop)
            self.fleet.start()
        self.timings["sources_ready_s"] = self.elapsed()
        self.interrupts.check()
        if files is not None:
            dagster_yaml, workspace = files
            env = {
                **self.environ,
                **stack_env(services, sources),
                DAGSTER_DATABASE_URL_ENV: services.dagster_database_url,
            }
            self.dagster = DagsterDev(
                self.state.path / "dagster_home",
                dagster_yaml,
                workspace,
                args.port,
                env,
                self.state.logs / "dagster.log",
                self.console,
                self.interrupts,
                # Only when the Dagster storage is ours: then no run created before now can be alive.
                cancel_stale_before=self.started_at if services.postgres is not None else None,
            )
            self.teardown.on_close(self.dagster.stop)
            self.dagster.start()
        self.write_stack()

    def _check_ports(self, sources: SourcesPlan) -> None:
        """Fail before starting anything if a port we must bind is taken."""
        wanted: list[tuple[int, str, str]] = []
        if not self.args.no_dagster:
            wanted.append((self.args.port, "the Dagster UI", "--port"))
        for name, port in sources.mock_ports(self.args.sources_port_base).items():
            wanted.append((port, f"mock source {name}", "--sources-port-base"))
        for port, what, option in wanted:
            if not port_is_free(port):
                raise DevError(
                    f"event-ingest dev: port {port} on {HOST} is already in use (needed for {what}); "
                    f"free it or choose another with {option}"
                )

    # -- run

    def view(self) -> StackView:
        if self.services is None or self.sources is None:
            raise RuntimeError("the dev stack has not started")
        return StackView(
            state_dir=self.state.path,
            stack_file=self.state.stack_file,
            logs_dir=self.state.logs,
            started_at=self.started_at,
            services=self.services,
            sources=self.sources,
            mock_children=tuple(self.fleet.children) if self.fleet else (),
            dagster=self.dagster.child if self.dagster else None,
            ready=self.dagster is None or self.dagster.settled,
            timings=dict(self.timings),
        )

    def write_stack(self) -> None:
        self.state.write_stack(stack_document(self.view()))

    def print_summary(self) -> None:
        self.console.say(summary(self.view(), self.elapsed()), prefix=False)

    def first_dead(self) -> tuple[str, int | None, Path] | None:
        """(what, exit code, log) of the first essential process that is no longer running."""
        server = self.services.first_dead() if self.services else None
        if server is not None:
            return server[0], None, server[1]
        if self.fleet is not None and (dead := self.fleet.first_dead()) is not None:
            return dead
        return self.dagster.first_dead() if self.dagster else None

    def watch(self) -> int:
        """Until a signal (exit 0) or an essential process dies (exit 1)."""
        if self.dagster is None:
            self.print_summary()
        next_poll = 0.0
        while not self.interrupts.count:
            dead = self.first_dead()
            if dead is not None:
                what, rc, log_path = dead
                code = f" with code {rc}" if rc is not None else ""
                self.say(f"ERROR: {what} exited unexpectedly{code}; log: {log_path}; stopping everything")
                return EXIT_FAILED
            dagster = self.dagster
            if dagster is not None and not dagster.settled and time.monotonic() >= next_poll:
                if dagster.poll(time.monotonic() - self.t0):
                    if dagster.answered_at is not None:
                        self.timings["ui_ready_s"] = round(dagster.answered_at - self.t0, 2)
                        self.write_stack()
                    self.print_summary()
                next_poll = time.monotonic() + 1.0
            self.interrupts.sleep(0.5)
        return EXIT_OK

    # -- stop

    def stop(self) -> bool:
        """Stop everything we started, in reverse order; True if it all went down cleanly."""
        self.interrupts.stopping()
        self.teardown.close()
        return self.teardown.clean


def run_dev(args: argparse.Namespace) -> int:
    stack = DevStack(args)
    # SIGHUP too: closing the terminal must not leave the children (in their own sessions) behind.
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, stack.interrupts.on_signal) for sig in sigs}
    code = EXIT_OK
    try:
        try:
            stack.start()
            code = stack.watch()
        except Interrupted:
            code = EXIT_OK
        except DevError as exc:
            print(str(exc), file=sys.stderr, flush=True)
            code = exc.code
        except ConfigError as exc:
            print(f"event-ingest dev: {exc}", file=sys.stderr, flush=True)
            code = EXIT_CONFIG
        finally:
            started = stack.started_anything
            if stack.interrupts.count and started:
                dagster_runs = stack.dagster is not None and stack.dagster.child is not None
                stack.say(
                    "stopping" + (" (Ctrl-C again to stop Dagster without waiting)..." if dagster_runs else "...")
                )
            if not stack.stop():
                stack.say("WARNING: some processes had to be killed; see the messages above")
            elif started:
                stack.say("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
