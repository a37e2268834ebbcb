"""The processes of a chaos run: mock sources and consumers, their announcements, and a supervisor.

Every child runs in a session of its own, so a fault (SIGKILL, SIGSTOP) hits a whole consumer
and nothing else; process groups are signalled through ``devstack.procs``, the one home for that.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..devstack.procs import kill_group, signal_group, terminate_group

log = logging.getLogger("event_ingest.chaos")


class HarnessError(RuntimeError):
    """The harness could not set itself up (one line for stderr)."""


@dataclass
class MockProc:
    name: str
    proc: subprocess.Popen
    url: str  # .../events

    @property
    def base_url(self) -> str:
        return self.url.rsplit("/", 1)[0]


@dataclass
class Slot:
    """One consumer deployment; its process is replaced when it dies."""

    name: str
    proc: subprocess.Popen | None = None
    incarnation: int = 0
    expect_exit: bool = False
    restarts: int = 0


class Bus:
    """Announcements from all consumers, in arrival order, for the harness to wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: deque[tuple[int, str, dict]] = deque(maxlen=20_000)
        self._seq = 0
        self.drain_ends: Counter[str] = Counter()

    def post(self, worker: str, ev: dict) -> None:
        with self._cond:
            self._seq += 1
            self._events.append((self._seq, worker, ev))
            if ev.get("ev") == "done":
                self.drain_ends[ev.get("status", "?")] += 1
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return self._seq

    def wait_for(self, match: Callable[[str, dict], bool], since: int, timeout: float) -> tuple[str, dict] | None:
        """The first announcement after ``since`` that matches, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                fresh = []
                for seq, worker, ev in reversed(self._events):
                    if seq <= since:
                        break
                    fresh.append((worker, ev))
                since = self._seq
                for worker, ev in reversed(fresh):
                    if match(worker, ev):
                        return worker, ev
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.5))


def start_mock(state_dir: Path, name: str, args: list[str]) -> MockProc:
    out_path = state_dir / "logs" / f"{name}.log"
    cmd = [sys.executable, "-m", "event_ingest.mocksource", "--name", name, "--port", "0", *args]
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 20
    while True:
        found = re.search(r"listening on (\S+)", out_path.read_text(errors="replace"))
        if found:
            return MockProc(name, proc, found.group(1))
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            raise HarnessError(f"mock source {name} did not start; see {out_path}")
        time.sleep(0.05)


class Consumers:
    """K consumer processes, restarted when they die; a death nobody caused is counted as a crash."""

    def __init__(self, state_dir: Path, names: list[str], bus: Bus) -> None:
        self.dir = state_dir
        self.bus = bus
        self.lock = threading.RLock()
        self.slots = [Slot(name) for name in names]
        self.crashes = 0
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        with self.lock:
            for slot in self.slots:
                self._spawn(slot)
        self._supervising.set()
        self._supervisor = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._supervisor.start()

    def slot(self, name: str) -> Slot:
        return next(s for s in self.slots if s.name == name)

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots)

    def release(self, name: str, source: str | None = None) -> None:
        """Let a held consumer go on (one source's hold, or all of them)."""
        for held in (self.dir / "control").glob(f"held-{name}-{source or '*'}"):
            held.unlink(missing_ok=True)

    def kill(self, slot: Slot) -> None:
        """SIGKILL a consumer; the supervisor starts it again (that is the restart)."""
        with self.lock:
            slot.expect_exit = True
            if slot.proc is not None:
                kill_group(slot.proc)
            self.release(slot.name)

    def signal(self, slot: Slot, sig: int) -> None:
        if slot.proc is not None:
            signal_group(slot.proc, sig)

    def _spawn(self, slot: Slot) -> None:
        """Start (or restart) a consumer process; caller holds the lock."""
        cmd = [sys.executable, "-m", "event_ingest.chaos", "consumer", str(self.dir / "consumers.json"), slot.name]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.dir / "logs" / f"{slot.name}.log", "ab") as err:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True
            )
        slot.proc = proc
        slot.incarnation += 1
        slot.expect_exit = False
        threading.Thread(
            target=self._read_announcements,
            args=(slot.name, proc.stdout),
            daemon=True,
            name=f"chaos-read-{slot.name}-{slot.incarnation}",
        ).start()

    def _read_announcements(self, name: str, stdout: IO[bytes]) -> None:
        for raw in stdout:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            if isinstance(ev, dict):
                self.bus.post(name, ev)
        stdout.close()

    def _supervise(self) -> None:
        while self._supervising.is_set():
            with self.lock:
                for slot in self.slots:
                    if slot.proc is None or slot.proc.poll() is None or not self._supervising.is_set():
                        continue
                    if not slot.expect_exit:
                        self.crashes += 1
                        log.error(
                            "chaos: consumer %s exited on its own with code %s; see %s",
                            slot.name,
                            slot.proc.returncode,
                            self.dir / "logs" / f"{slot.name}.log",
                        )
                    self.release(slot.name)
                    slot.restarts += 1
                    self._spawn(slot)
            time.sleep(0.05)

    def stop(self, wait_s: float) -> None:
        """SIGCONT and SIGTERM every consumer, give them ``wait_s`` to let go of their leases, then kill."""
        self._supervising.clear()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        with self.lock:
            live = [(s, s.proc) for s in self.slots if s.proc is not None and s.proc.poll() is None]
            for slot, proc in live:
                slot.expect_exit = True
                signal_group(proc, signal.SIGCONT)
                signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        for slot, proc in live:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("chaos: consumer %s did not stop on SIGTERM; killing it", slot.name)
                kill_group(proc)

    def kill_all(self) -> None:
        self._supervising.clear()
        with self.lock:
            for slot in self.slots:
                if slot.proc is not None:
                    slot.expect_exit = True
                    kill_group(slot.proc)


def stop_mocks(mocks: list[MockProc]) -> None:
    for mock in mocks:
        terminate_group(mock.proc)
