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
    dagster_home/           DAGSTER_HOME (dagster.yaml copied from the project)
    logs/                   one log per child; dagster.log is also shown on our stdout
    sources.yaml            generated when the mock sources are used
    stack.json              URLs, pids and log paths of the running stack (removed on a clean stop)
    dev.lock                held while a dev stack runs on this state dir

Every child runs in its own session (process group), so a Ctrl-C in the terminal reaches us
only and we stop the children in order; nothing is left behind, not even Dagster's run workers.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import event_ingest

from ..config import (
    DAGSTER_DATABASE_URL_ENV,
    DATABASE_URL_ENV,
    REDIS_URL_ENV,
    SOURCES_ENV,
    ConfigError,
    load_sources,
    redact_url,
)
from .embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from .procs import HOST, alive, killpg, port_is_free, process_tree, signal_pid, start_time, sweep

DEFAULT_STATE_DIR = ".event-ingest"
STACK_FILE = "stack.json"
LOCK_FILE = "dev.lock"

#: The original system's three mock sources: (name, events per response, random seed).
MOCK_SOURCES = (("source1", 3, 1), ("source2", 2, 2), ("source3", 4, 3))
MOCK_ERROR_RATE = 0.2

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

DAGSTER_STOP_TIMEOUT_S = 20.0
RUN_STOP_TIMEOUT_S = 15.0
UI_READY_TIMEOUT_S = 180.0

WORKSPACE_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
RUNS_QUERY = """query Runs($filter: RunsFilter) { runsOrError(filter: $filter) {
    ... on Runs { results { runId status creationTime } } ... on PythonError { message } } }"""
TERMINATE_RUNS_MUTATION = """mutation Terminate($runIds: [String!]!, $policy: TerminateRunPolicy) {
    terminateRuns(runIds: $runIds, terminatePolicy: $policy) { __typename } }"""


class DevError(Exception):
    """One line for stderr, and an exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


class _Interrupted(Exception):
    """SIGINT/SIGTERM arrived while starting up."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help=f"state dir: server data, DAGSTER_HOME, logs (default ./{DEFAULT_STATE_DIR})")
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port (default 3000)")
    parser.add_argument("--sources", default=None, metavar="FILE",
                        help=f"sources file; no mock sources are started (default: ${SOURCES_ENV}, "
                             "else three mock sources and a generated file)")
    parser.add_argument("--sources-port-base", type=int, default=3001, metavar="PORT",
                        help="the mock sources listen on PORT, PORT+1, PORT+2 (default 3001)")
    parser.add_argument("--no-dagster", action="store_true",
                        help="start Postgres, Redis and the sources only (no Dagster)")
    parser.add_argument("--no-mock-sources", action="store_true",
                        help="start no mock sources (the generated sources file still lists them, "
                             "for you to serve)")


# ----------------------------------------------------------------------- children


@dataclass
class Child:
    """A process we started (a mock source, dagster dev), in its own session."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    start_time: int | None = None
    url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time, "url": self.url,
                "log": str(self.log_path), **self.extra}


def _log_tail(path: Path, n: int = 5) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(ln[:200] for ln in lines[-n:])


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Readers never see half a file. Owner-only: URLs from the environment may hold passwords."""
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def project_dir() -> Path:
    """The checkout the package runs from (it holds dagster.yaml and workspace.yaml)."""
    return Path(event_ingest.__file__).resolve().parent.parent


def dagster_storage_url(url: str) -> str:
    """The URL to give Dagster's Postgres storage for a ``postgresql://`` URL.

    SQLAlchemy 2.1 maps a plain ``postgresql://`` URL to psycopg 3, under which dagster-postgres'
    ``NOTIFY run_events, :notify_id`` fails (psycopg 3 binds parameters server-side and NOTIFY
    takes none), so no run could ever be created. Name the driver dagster-postgres is written for.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg2://{rest}"
    return url


def _dagster_command() -> list[str]:
    exe = Path(sys.executable).parent / "dagster"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "dagster"]


# -------------------------------------------------------------------------- stack


class DevStack:
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

    def _project_files(self) -> tuple[Path, Path]:
        root = project_dir()
        dagster_yaml, workspace = root / "dagster.yaml", root / "workspace.yaml"
        if not self.args.no_dagster:
            for f in (dagster_yaml, workspace):
                if not f.is_file():
                    raise DevError(f"event-ingest dev: {f} not found; it ships beside the event_ingest "
                                   f"package (run from a checkout, or pass --no-dagster)")
        return dagster_yaml, workspace

    def _lock_state_dir(self) -> None:
        """One dev stack per state dir. Holding this lock also proves that any server or child
        still running on this state dir is a leftover of a run that was killed hard."""
        path = self.state_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DevError(f"event-ingest dev: another dev stack (pid {holder}) is running on "
                           f"{self.state_dir}; stop it first (Ctrl-C there) or use another --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd

    def _stop_leftovers(self) -> None:
        """Stop the children a hard-killed earlier run left behind (they would hold the ports).
        Postgres and Redis leftovers are handled by the servers' own on_orphan="stop"."""
        try:
            old = json.loads(self.stack_file.read_text())
        except (OSError, ValueError):
            return
        entries = [*old.get("sources", {}).get("children", []), old.get("dagster") or {}]
        for entry in entries:
            pid, start = entry.get("pid"), entry.get("start_time")
            if isinstance(pid, int) and start is not None and alive(pid, start):
                self.say(f"stopping {entry.get('name')} (pid {pid}) left running by an earlier run")
                tree = process_tree([pid], pgid=pid)
                signal_pid(pid, signal.SIGTERM)
                sweep(tree, pid, wait_s=10)
        self.stack_file.unlink(missing_ok=True)

    def _resolve_sources(self) -> None:
        given = self.args.sources or os.environ.get(SOURCES_ENV)
        if not self.args.sources and given:
            self.from_env.add(SOURCES_ENV)
        if given:
            self.sources_file = Path(given).expanduser().resolve()
            sources = load_sources(self.sources_file)  # fails now, with one line, if the file is bad
            self.source_urls = {s.name: s.url for s in sources}
            self.mock = self.generated_sources = False
            return
        self.mock = not self.args.no_mock_sources
        self.generated_sources = True
        base = self.args.sources_port_base
        self.source_urls = {name: f"http://{HOST}:{base + i}/events" for i, (name, _, _) in enumerate(MOCK_SOURCES)}
        self.sources_file = self.state_dir / "sources.yaml"
        lines = ["# Generated by `event-ingest dev` at every start: the mock sources it runs.", "sources:"]
        for name, url in self.source_urls.items():
            # Local mocks answer in milliseconds. A short timeout also shortens the gate's cold-start
            # hold (timeout + interval), so a fresh stack sends its first request ~2 s in, not ~10 s.
            lines += [f"  - name: {name}", f"    url: {url}", "    timeout_s: 2"]
        self.sources_file.write_text("\n".join(lines) + "\n")

    def _check_ports(self) -> None:
        """Fail before starting anything if a port we must bind is taken."""
        wanted: list[tuple[int, str, str]] = []
        if not self.args.no_dagster:
            wanted.append((self.args.port, "the Dagster UI", "--port"))
        if self.mock:
            for i, (name, _, _) in enumerate(MOCK_SOURCES):
                wanted.append((self.args.sources_port_base + i, f"mock source {name}", "--sources-port-base"))
        for port, what, option in wanted:
            if not port_is_free(port):
                raise DevError(f"event-ingest dev: port {port} on {HOST} is already in use (needed for {what}); "
                               f"free it or choose another with {option}")

    def _start_postgres(self) -> None:
        external = os.environ.get(DATABASE_URL_ENV)
        if external:
            self.from_env.add(DATABASE_URL_ENV)
            self.database_url = external
            # Dagster keeps its own tables (runs, event_logs, ...) in Postgres too. Without a
            # database of its own (EVENT_INGEST_DAGSTER_DATABASE_URL), it shares the events
            # database: its table names do not clash with ours, and we must not create databases
            # on a server that is not ours.
            self.dagster_database_url = dagster_storage_url(os.environ.get(DAGSTER_DATABASE_URL_ENV) or external)
            return
        self.say("starting Postgres (embedded)...")
        # on_orphan="stop": we hold the state dir's lock, so a server still running on this
        # data dir is a leftover of a run that was killed hard, not someone else's.
        self.pg = EmbeddedPostgres(self.state_dir / "postgres", databases=("event_ingest", "dagster"),
                                   on_orphan="stop", log_file=self.logs_dir / "postgres.log")
        try:
            self.pg.start(timeout=60)
        except EmbeddedServerError as exc:
            raise DevError(f"event-ingest dev: embedded Postgres: {exc}") from None
        self.database_url = str(self.pg.url)
        self.dagster_database_url = dagster_storage_url(self.pg.url("dagster"))

    def _start_redis(self) -> None:
        external = os.environ.get(REDIS_URL_ENV)
        if external:
            self.from_env.add(REDIS_URL_ENV)
            self.redis_url = external
            from ..core import RedisUnavailable, connect_redis

            try:
                connect_redis(external).close()
            except RedisUnavailable as exc:
                raise DevError(f"event-ingest dev: {exc} ({REDIS_URL_ENV} is set, so no Redis of our own "
                               f"is started; unset it to use an embedded one)") from None
            return
        self.say("starting Redis (embedded valkey)...")
        self.redis = EmbeddedRedis(self.state_dir / "redis", persistent=True, on_orphan="stop",
                                   log_file=self.logs_dir / "redis.log")
        try:
            self.redis.start()
        except EmbeddedServerError as exc:
            raise DevError(f"event-ingest dev: embedded Redis: {exc}") from None
        self.redis_url = str(self.redis.url)

    def _apply_schema(self) -> None:
        """So `event-ingest status` works at once, before Dagster's first run."""
        from ..core import Store, StoreError

        try:
            with Store(self.database_url, application_name="event-ingest-dev") as store:
                store.apply_schema(list(self.source_urls))
        except StoreError as exc:
            hint = (f" ({DATABASE_URL_ENV} is set, so no Postgres of our own is started; unset it to use "
                    f"an embedded one)") if self.pg is None else ""
            raise DevError(f"event-ingest dev: {exc}{hint}") from None

    def _spawn(self, name: str, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        try:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        except OSError as exc:
            raise DevError(f"event-ingest dev: cannot start {name} ({cmd[0]}): {exc}") from None

    def _start_mock_sources(self) -> None:
        if not self.mock:
            return
        self.say("starting mock sources...")
        for i, (name, batch, seed) in enumerate(MOCK_SOURCES):
            port = self.args.sources_port_base + i
            log_path = self.logs_dir / f"mock-{name}.log"
            cmd = [sys.executable, "-m", "event_ingest.cli", "mock-source", "--name", name, "--port", str(port),
                   "--seed-batch", str(batch), "--error-rate", str(MOCK_ERROR_RATE), "--random-seed", str(seed)]
            with open(log_path, "ab") as logf:
                proc = self._spawn(f"mock source {name}", cmd, stdout=logf, stderr=subprocess.STDOUT)
            child = Child(name, proc, log_path, start_time(proc.pid), self.source_urls[name],
                          {"events_per_response": batch, "error_rate": MOCK_ERROR_RATE})
            self.sources.append(child)
        for child in self.sources:
            self._wait_source_ready(child)

    def _wait_source_ready(self, child: Child) -> None:
        import httpx

        health = child.url.rsplit("/", 1)[0] + "/health"
        deadline = time.monotonic() + 20
        while True:
            rc = child.proc.poll()
            if rc is not None:
                tail = _log_tail(child.log_path)
                if "address already in use" in tail.lower():
                    port = child.url.rsplit(":", 1)[1].split("/")[0]
                    raise DevError(f"event-ingest dev: port {port} on {HOST} is already in use (needed for mock "
                                   f"source {child.name}); free it or choose another with --sources-port-base")
                raise DevError(f"event-ingest dev: mock source {child.name} exited with code {rc} at start; "
                               f"log: {child.log_path}: {tail}")
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise DevError(f"event-ingest dev: mock source {child.name} did not answer on {health} within 20s; "
                               f"log: {child.log_path}")
            self.check_interrupted()
            time.sleep(0.1)

    def _start_dagster(self, dagster_yaml: Path, workspace: Path) -> None:
        home = self.state_dir / "dagster_home"
        home.mkdir(exist_ok=True)
        shutil.copyfile(dagster_yaml, home / "dagster.yaml")  # every start: the project's copy wins
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            **self.env(),
            DAGSTER_DATABASE_URL_ENV: self.dagster_database_url,
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [*_dagster_command(), "dev", "-w", str(workspace), "-h", HOST, "-p", str(self.args.port)]
        log_path = self.logs_dir / "dagster.log"
        self.say(f"starting Dagster ({' '.join(cmd[-6:])}); it takes 10-30 s, the summary follows when the UI answers")
        # cwd = DAGSTER_HOME: dagster dev warns about a dagster.yaml in its cwd (the project's) that
        # is not DAGSTER_HOME's.
        proc = self._spawn("dagster dev", cmd, cwd=str(home), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.dagster = Child("dagster", proc, log_path, start_time(proc.pid), self.ui_url, {"home": str(home)})
        self.tee = threading.Thread(target=self._tee, args=(proc, log_path), name="dagster-output", daemon=True)
        self.tee.start()

    def _tee(self, proc: subprocess.Popen, log_path: Path) -> None:
        """dagster dev's output (and its webserver's, daemon's, code server's, runs') to our
        stdout and to logs/dagster.log."""
        show = True
        with open(log_path, "ab") as logf:
            for line in iter(proc.stdout.readline, b""):
                logf.write(line)
                logf.flush()
                # If our stdout went away, keep the log going (and dagster's pipe drained).
                show = show and self.write(line.decode(errors="replace"))

    # -- run

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 5) -> dict[str, Any]:
        """POST a query to the Dagster webserver; its "data" (raises on transport or query errors)."""
        import httpx

        r = httpx.post(f"{self.ui_url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout)
        r.raise_for_status()
        body = r.json()
        if body.get("errors"):
            raise ValueError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def poll_ui(self) -> bool:
        """The webserver answers and has loaded the code location."""
        import httpx

        try:
            entries = self.graphql(WORKSPACE_QUERY, timeout=2)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False
        if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
            return False
        for e in entries:
            err = e.get("locationOrLoadError") or {}
            if err.get("__typename") == "PythonError":
                first = (err.get("message") or "").strip().splitlines()[:1]
                self.say(f"WARNING: Dagster could not load code location {e['name']}: {' '.join(first)}")
        return True

    def runs(self, statuses: list[str], **created: float) -> list[dict[str, Any]]:
        """Runs in `statuses`, optionally createdBefore/createdAfter an epoch time."""
        data = self.graphql(RUNS_QUERY, {"filter": {"statuses": statuses, **created}})["runsOrError"]
        return data.get("results", [])

    def terminate_runs(self, run_ids: list[str], policy: str) -> None:
        self.graphql(TERMINATE_RUNS_MUTATION, {"runIds": run_ids, "policy": policy}, timeout=30)

    def cancel_stale_runs(self) -> None:
        """Runs that an earlier session left STARTING/STARTED: their workers died with it (a hard
        kill, or a stop that could not wait for them). Dagster's default run launcher cannot
        health-check run workers, so these would stay "running" for ever and the sensors, which
        wait for a partition's active run to end, would never drain those sources again.
        Only when the Dagster storage is ours (embedded) and we hold the state dir's lock: then
        no run created before this start can be alive."""
        import httpx

        if self.pg is None:
            return
        try:
            stale = self.runs(["STARTING", "STARTED", "CANCELING"], createdBefore=self.started_at)
            if stale:
                self.terminate_runs([r["runId"] for r in stale], "MARK_AS_CANCELED_IMMEDIATELY")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.say(f"WARNING: could not check for runs left over by an earlier session: {exc}")
            return
        if stale:
            self.say(f"marked {len(stale)} run(s) an earlier session left running as canceled: "
                     f"{', '.join(r['runId'][:8] for r in stale)}")

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
                    self.say(f"WARNING: the Dagster UI did not answer within {UI_READY_TIMEOUT_S:.0f}s; "
                             f"see {self.dagster.log_path}")
                    self.print_summary()
                next_poll = time.monotonic() + 1.0
            self.sleep(0.5)
        return EXIT_OK

    # -- report

    def write_stack(self) -> None:
        data = {
            "pid": os.getpid(),
            "state_dir": str(self.state_dir),
            "started_at": datetime.fromtimestamp(self.started_at, timezone.utc).isoformat(timespec="seconds"),
            "ready": self.dagster is None or self.ui_ready,
            "env": self.env(),
            "postgres": {"url": self.database_url, "dagster_url": self.dagster_database_url,
                         "embedded": self.pg is not None, "pid": self.pg.pid if self.pg else None,
                         "log": str(self.pg.log_path) if self.pg else None},
            "redis": {"url": self.redis_url, "embedded": self.redis is not None,
                      "pid": self.redis.pid if self.redis else None,
                      "log": str(self.redis.log_path) if self.redis else None},
            "sources": {"file": str(self.sources_file), "mock": self.mock, "urls": self.source_urls,
                        "children": [c.describe() for c in self.sources]},
            "dagster": self.dagster.describe() if self.dagster else None,
            "timings": self.timings,
        }
        _write_json_atomic(self.stack_file, data)

    def print_summary(self) -> None:
        pg_note = "embedded; Dagster storage in database 'dagster'" if self.pg else f"from ${DATABASE_URL_ENV}"
        rows = []
        if self.dagster is not None:
            rows.append(("Dagster UI", self.ui_url + ("" if self.timings.get("ui_ready_s") else "  (not answering yet)")))
        rows += [
            ("Postgres", f"{redact_url(self.database_url)}  ({pg_note})"),
            ("Redis", f"{redact_url(self.redis_url)}  ({'embedded' if self.redis else f'from ${REDIS_URL_ENV}'})"),
            ("sources file", str(self.sources_file)),
        ]
        by_name = {c.name: c for c in self.sources}
        for name, url in self.source_urls.items():
            child = by_name.get(name)
            note = (f"  (mock, {child.extra['events_per_response']} events per response, "
                    f"{child.extra['error_rate']:.0%} errors)") if child else ""
            if child is None and self.generated_sources:
                note = "  (not started: --no-mock-sources)"
            rows.append((f"  {name}", url + note))
        rows += [("state dir", str(self.state_dir)), ("stack file", str(self.stack_file))]
        logs = [p for p in (self.pg and self.pg.log_path, self.redis and self.redis.log_path) if p]
        logs += [c.log_path for c in self.sources] + ([self.dagster.log_path] if self.dagster else [])
        rows.append(("logs", f"{self.logs_dir}/  ({', '.join(p.name for p in logs)})"))
        width = max(len(k) for k, _ in rows)
        ready = f"ready in {self.elapsed():.1f}s"
        lines = ["", f"event-ingest dev is running ({ready})", ""]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
        lines += ["", "Look at the ingest from another terminal:"]
        lines += [f"  export {k}={shlex.quote(v)}" if k not in self.from_env else f"  # {k}: as set in your environment"
                  for k, v in self.env().items()]
        lines += ["  event-ingest status", "",
                  "Stop everything with Ctrl-C. The data is kept: the next `event-ingest dev` resumes.", ""]
        self.say("\n".join(lines), prefix=False)

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

    def _wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        """Poll `done` until true or `timeout`; a further Ctrl-C cuts the wait short."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline or self.hurry:
                return False
            time.sleep(0.1)
        return True

    def _stop_dagster(self) -> bool:
        """In two steps, so that no run is left "running" in Dagster's storage:

        1. SIGINT to dagster dev alone. It stops its webserver and daemon (so no sensor starts
           another run) but leaves its code server, and the run workers under it, running.
        2. SIGINT to the rest of its process group, as a Ctrl-C in a terminal would. The code
           server exits and each run worker ends its run as interrupted (drains commit page by
           page, so nothing is lost), recording that while Postgres is still up.

        Whatever still runs after that is killed: the process group, and every descendant
        seen in /proc before signalling."""
        proc = self.dagster.proc
        pgid = proc.pid
        tree = process_tree([proc.pid], pgid=pgid)
        clean = True
        if proc.poll() is None:
            self.say("stopping Dagster...")
            signal_pid(proc.pid, signal.SIGINT)
            if not self._wait_for(lambda: proc.poll() is not None, DAGSTER_STOP_TIMEOUT_S):
                self.say(f"dagster dev did not stop within {DAGSTER_STOP_TIMEOUT_S:.0f}s")
                clean = False
        tree.update(process_tree([p for p, t in tree.items() if alive(p, t)], pgid))
        rest = {p: t for p, t in tree.items() if p != proc.pid and alive(p, t)}
        if rest:
            self.say(f"stopping Dagster's code server and run workers ({len(rest)} processes)...")
            killpg(pgid, signal.SIGINT)
            if not self._wait_for(lambda: not any(alive(p, t) for p, t in rest.items()), RUN_STOP_TIMEOUT_S):
                clean = False
        killed = sweep(tree, pgid, wait_s=0)
        proc.wait()
        if killed:
            self.say(f"killed {len(killed)} Dagster process(es) that did not stop: "
                     f"{', '.join(map(str, sorted(killed)))}")
        return clean

    def _stop_child(self, child: Child, sig: int, timeout: float) -> bool:
        proc = child.proc
        if proc.poll() is None:
            signal_pid(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} (pid {proc.pid}) did not stop within {timeout:.0f}s; killing it")
                killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return False
        sweep(process_tree([proc.pid], pgid=proc.pid), proc.pid, wait_s=0)
        return True


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
                stack.say("stopping" + (" (Ctrl-C again to stop Dagster without waiting)..."
                                        if stack.dagster is not None else "..."))
            if not stack.stop():
                stack.say("WARNING: some processes had to be killed; see the messages above")
            elif started:
                stack.say("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
