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
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..config import DATABASE_URL_ENV, REDIS_URL_ENV, SOURCES_ENV, ConfigError
from ..exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from .children import Child, _Children
from .dagster_ui import UI_READY_TIMEOUT_S, _DagsterUI
from .embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from .errors import DevError, _Interrupted
from .procs import HOST
from .report import _Report
from .services import _Services
from .statedir import DEFAULT_STATE_DIR, STACK_FILE, _StateDir


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


class DevStack(_StateDir, _Services, _Children, _DagsterUI, _Report):
    """The running dev stack. Its state is here; the steps live by concern in statedir.py,
    services.py, children.py, dagster_ui.py and report.py."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out_lock = threading.Lock()  # our lines and dagster's, whole lines each
        self.t0 = time.monotonic()
        self.started_at = time.time()
        self.state_dir = Path(args.data_dir or Path.cwd() / DEFAULT_STATE_DIR).expanduser().resolve()
        self.logs_dir = self.state_dir / "logs"
        self.stack_file = self.state_dir / STACK_FILE
        self.interrupts = 0
        self.interrupts_at_stop = 0
        self.lock_fd: int | None = None
        self.pg: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.sources: list[Child] = []
        self.dagster: Child | None = None
        self.tee: threading.Thread | None = None
        self.database_url = ""
        self.dagster_database_url = ""
        self.redis_url = ""
        self.sources_file: Path | None = None
        self.mock = False
        self.generated_sources = False
        self.source_urls: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.ui_ready = False
        self.from_env: set[str] = set()  # variables the user set (not printed back: may hold passwords)

    # -- helpers

    def say(self, message: str, prefix: bool = True) -> None:
        self.write(f"event-ingest dev: {message}\n" if prefix else message + "\n")

    def write(self, text: str) -> bool:
        """To our stdout; False if it is gone (a closed terminal or pipe)."""
        with self.out_lock:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
                return True
            except (OSError, ValueError):
                return False

    @property
    def started_anything(self) -> bool:
        return bool(self.pg or self.redis or self.sources or self.dagster)

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.args.port}"

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def check_interrupted(self) -> None:
        if self.interrupts:
            raise _Interrupted()

    def sleep(self, seconds: float) -> None:
        """Sleep, cut short by SIGINT/SIGTERM (the handler only counts; see run_dev)."""
        deadline = time.monotonic() + seconds
        while not self.interrupts and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def env(self) -> dict[str, str]:
        """What `event-ingest status` / `ingest` / Dagster need to find this stack."""
        return {
            DATABASE_URL_ENV: self.database_url,
            REDIS_URL_ENV: self.redis_url,
            SOURCES_ENV: str(self.sources_file),
        }

    # -- start

    def start(self) -> None:
        args = self.args
        for opt, port in (("--port", args.port), ("--sources-port-base", args.sources_port_base)):
            if not 1 <= port <= 65535 - (2 if opt == "--sources-port-base" else 0):
                raise DevError(f"event-ingest dev: {opt} {port} is not a usable TCP port")
        files = self._project_files()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self._lock_state_dir()
        self._stop_leftovers()
        self._resolve_sources()
        self._check_ports()

        self._start_postgres()
        self.check_interrupted()
        self._start_redis()
        self.check_interrupted()
        self._apply_schema()
        self.timings["services_ready_s"] = self.elapsed()
        self.check_interrupted()
        self._start_mock_sources()
        self.timings["sources_ready_s"] = self.elapsed()
        self.check_interrupted()
        if not args.no_dagster:
            self._start_dagster(*files)
        self.write_stack()

    def first_dead(self) -> tuple[str, int | None, Path] | None:
        """(what, exit code, log) of the first essential child that is no longer running."""
        if self.pg is not None and not self.pg.is_running():
            return "Postgres", None, self.pg.log_path
        if self.redis is not None and not self.redis.is_running():
            return "Redis", None, self.redis.log_path
        for child in self.sources:
            if child.proc.poll() is not None:
                return f"mock source {child.name}", child.proc.returncode, child.log_path
        if self.dagster is not None and self.dagster.proc.poll() is not None:
            return "dagster dev", self.dagster.proc.returncode, self.dagster.log_path
        return None

    def watch(self) -> int:
        """Until a signal (exit 0) or an essential child dies (exit 1)."""
        if self.dagster is None:
            self.print_summary()
        next_poll = 0.0
        while not self.interrupts:
            dead = self.first_dead()
            if dead is not None:
                what, rc, log_path = dead
                code = f" with code {rc}" if rc is not None else ""
                self.say(f"ERROR: {what} exited unexpectedly{code}; log: {log_path}; stopping everything")
                return EXIT_FAILED
            if self.dagster is not None and not self.ui_ready and time.monotonic() >= next_poll:
                if self.poll_ui():
                    self.timings["ui_ready_s"] = self.elapsed()
                    self.ui_ready = True
                    self.cancel_stale_runs()
                    self.write_stack()
                    self.print_summary()
                elif time.monotonic() - self.t0 > UI_READY_TIMEOUT_S:
                    self.ui_ready = True  # stop polling; say where to look
                    self.say(
                        f"WARNING: the Dagster UI did not answer within {UI_READY_TIMEOUT_S:.0f}s; "
                        f"see {self.dagster.log_path}"
                    )
                    self.print_summary()
                next_poll = time.monotonic() + 1.0
            self.sleep(0.5)
        return EXIT_OK

    # -- stop

    @property
    def hurry(self) -> bool:
        """Another Ctrl-C after stopping began: do not wait for Dagster's graceful shutdown."""
        return self.interrupts > self.interrupts_at_stop

    def stop(self) -> bool:
        """Stop everything we started, in order; True if it all went down cleanly."""
        self.interrupts_at_stop = self.interrupts
        clean = True
        if self.dagster is not None:
            clean &= self._stop_dagster()
        for child in reversed(self.sources):
            clean &= self._stop_child(child, signal.SIGTERM, 5)
        for server in (self.redis, self.pg):
            if server is not None:
                try:
                    server.stop()
                except EmbeddedServerError as exc:
                    self.say(f"WARNING: {exc}")
                    clean = False
        if self.tee is not None:
            self.tee.join(5)
        if self.lock_fd is not None:  # else the stack file is another run's
            self.stack_file.unlink(missing_ok=True)
            os.close(self.lock_fd)  # releases the lock
            self.lock_fd = None
        return clean


def run_dev(args: argparse.Namespace) -> int:
    stack = DevStack(args)

    def on_signal(signum: int, frame: Any) -> None:
        # Only count: the main loop and the start/stop steps look at the count. (Printing or
        # taking locks here could deadlock with the code the signal interrupted.)
        stack.interrupts += 1

    # SIGHUP too: closing the terminal must not leave the children (in their own sessions) behind.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code = EXIT_OK
    try:
        try:
            stack.start()
            code = stack.watch()
        except _Interrupted:
            code = EXIT_OK
        except DevError as exc:
            print(str(exc), file=sys.stderr, flush=True)
            code = exc.code
        except ConfigError as exc:
            print(f"event-ingest dev: {exc}", file=sys.stderr, flush=True)
            code = EXIT_CONFIG
        finally:
            started = stack.started_anything
            if stack.interrupts and started:
                stack.say(
                    "stopping"
                    + (" (Ctrl-C again to stop Dagster without waiting)..." if stack.dagster is not None else "...")
                )
            if not stack.stop():
                stack.say("WARNING: some processes had to be killed; see the messages above")
            elif started:
                stack.say("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
