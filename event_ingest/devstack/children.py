"""The dev stack's children: the mock sources and `dagster dev`, each in its own session;
starting them, showing Dagster's output, stopping them with nothing left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DAGSTER_DATABASE_URL_ENV
from ..mocksource.cli import command as mock_source_command
from .errors import DevError
from .procs import HOST, alive, killpg, process_tree, signal_pid, spawn, start_time, stop_child, sweep

#: The original system's three mock sources: (name, events per response, random seed).
MOCK_SOURCES = (("source1", 3, 1), ("source2", 2, 2), ("source3", 4, 3))
MOCK_ERROR_RATE = 0.2

DAGSTER_STOP_TIMEOUT_S = 20.0
RUN_STOP_TIMEOUT_S = 15.0


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
        return {
            "name": self.name,
            "pid": self.pid,
            "start_time": self.start_time,
            "url": self.url,
            "log": str(self.log_path),
            **self.extra,
        }


def _log_tail(path: Path, n: int = 5) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(ln[:200] for ln in lines[-n:])


def _dagster_command() -> list[str]:
    exe = Path(sys.executable).parent / "dagster"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "dagster"]


class Children:
    """DevStack's children (the attributes are DevStack's, in dev.py)."""

    def _spawn(self, name: str, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        try:
            return spawn(cmd, **kwargs)
        except OSError as exc:
            raise DevError(f"event-ingest dev: cannot start {name} ({cmd[0]}): {exc}") from None

    def _start_mock_sources(self) -> None:
        if not self.mock:
            return
        self.say("starting mock sources...")
        for i, (name, batch, seed) in enumerate(MOCK_SOURCES):
            port = self.args.sources_port_base + i
            log_path = self.logs_dir / f"mock-{name}.log"
            cmd = mock_source_command(name, port, seed_batch=batch, error_rate=MOCK_ERROR_RATE, random_seed=seed)
            with open(log_path, "ab") as logf:
                proc = self._spawn(f"mock source {name}", cmd, stdout=logf, stderr=subprocess.STDOUT)
            child = Child(
                name,
                proc,
                log_path,
                start_time(proc.pid),
                self.source_urls[name],
                {"events_per_response": batch, "error_rate": MOCK_ERROR_RATE},
            )
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
                    raise DevError(
                        f"event-ingest dev: port {port} on {HOST} is already in use (needed for mock "
                        f"source {child.name}); free it or choose another with --sources-port-base"
                    )
                raise DevError(
                    f"event-ingest dev: mock source {child.name} exited with code {rc} at start; "
                    f"log: {child.log_path}: {tail}"
                )
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise DevError(
                    f"event-ingest dev: mock source {child.name} did not answer on {health} within 20s; "
                    f"log: {child.log_path}"
                )
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
        # cwd = DAGSTER_HOME: dagster dev reads a dagster.yaml in its cwd, and must read this one.
        proc = self._spawn("dagster dev", cmd, cwd=str(home), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
            self.say(
                f"killed {len(killed)} Dagster process(es) that did not stop: {', '.join(map(str, sorted(killed)))}"
            )
        return clean

    def _stop_child(self, child: Child, sig: int, timeout: float) -> bool:
        proc = child.proc
        if not stop_child(proc, sig, timeout):
            self.say(f"{child.name} (pid {proc.pid}) did not stop within {timeout:.0f}s; killed it")
            return False
        sweep(process_tree([proc.pid], pgid=proc.pid), proc.pid, wait_s=0)
        return True
