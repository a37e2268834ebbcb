"""The mock sources of the live cases: N mock sources, each its own process, producing live (every payload
stamped with its creation time); what they saw is read back from them (``/stats?arrivals=1``: every
request's arrival, stamped by the mock before anything else)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

from ..devstack.procs import HOST, free_port, spawn, stop_child
from ..mocksource.cli import command as mock_source_command
from .figures import Observed


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
