"""The dev stack's mock sources: one `event-ingest mock-source` child per source, each in its own
session, answering like the original system's (3, 2 and 4 events per response, 20% errors)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..mocksource.cli import command as mock_source_command
from .child import Child
from .errors import DevError
from .procs import HOST
from .runtime import Interrupts
from .sources import MOCK_ERROR_RATE, MOCK_SOURCES

READY_TIMEOUT_S = 20.0


class MockFleet:
    """The mock sources on `port_base`, `port_base`+1, ..., serving `urls` ({name: events URL})."""

    def __init__(
        self,
        urls: dict[str, str],
        port_base: int,
        logs_dir: Path,
        interrupts: Interrupts,
        say: Callable[[str], None],
    ) -> None:
        self._urls = urls
        self._port_base = port_base
        self._logs_dir = logs_dir
        self._interrupts = interrupts
        self._say = say
        self.children: list[Child] = []

    def start(self) -> None:
        """Start them all, then wait until each answers its health check."""
        self._say("starting mock sources...")
        for i, (name, batch, seed) in enumerate(MOCK_SOURCES):
            log_path = self._logs_dir / f"mock-{name}.log"
            cmd = mock_source_command(
                name, self._port_base + i, seed_batch=batch, error_rate=MOCK_ERROR_RATE, random_seed=seed
            )
            with open(log_path, "ab") as logf:
                child = Child.spawn(
                    f"mock source {name}", name, cmd, log_path, self._urls[name], stdout=logf, stderr=subprocess.STDOUT
                )
            child.extra = {"events_per_response": batch, "error_rate": MOCK_ERROR_RATE}
            self.children.append(child)
        for child in self.children:
            self._wait_ready(child)

    def first_dead(self) -> tuple[str, int | None, Path] | None:
        """(what, exit code, log) of the first mock source no longer running."""
        for child in self.children:
            rc = child.exit_code()
            if rc is not None:
                return f"mock source {child.name}", rc, child.log_path
        return None

    def stop(self) -> bool:
        """SIGTERM each (the last started first); True if all exited of themselves."""
        clean = True
        for child in reversed(self.children):
            clean = child.stop(self._say) and clean
        return clean

    def _wait_ready(self, child: Child) -> None:
        import httpx

        url = child.url or ""
        health = url.rsplit("/", 1)[0] + "/health"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            rc = child.exit_code()
            if rc is not None:
                tail = child.log_tail()
                if "address already in use" in tail.lower():
                    port = url.rsplit(":", 1)[1].split("/")[0]
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
                    f"event-ingest dev: mock source {child.name} did not answer on {health} "
                    f"within {READY_TIMEOUT_S:.0f}s; log: {child.log_path}"
                )
            self._interrupts.check()
            time.sleep(0.1)
