"""MockSource: one mock source served from background threads, and serve_forever for a process."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any, TextIO

from event_ingest.mocksource.config import MockSourceConfig
from event_ingest.mocksource.handler import Server
from event_ingest.mocksource.state import SourceState


class MockSource:
    """A mock source running in background threads.

    ``with MockSource(MockSourceConfig(backlog=100)) as src: httpx.get(src.url)``
    """

    def __init__(self, config: MockSourceConfig | None = None) -> None:
        self.config = config if config is not None else MockSourceConfig()
        self.config.validate()
        self._state: SourceState | None = None
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> MockSource:
        if self._state is not None:
            raise RuntimeError("MockSource already started (sources are not restartable)")
        state = SourceState(self.config)
        server = Server((self.config.host, self.config.port), state)
        self._state, self._server = state, server
        serve = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() returns within ~50 ms
            name=f"mocksource-{self.config.name}",
            daemon=True,
        )
        self._threads = [serve]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call more than once."""
        if self._server is None or self._state is None or self._state.stopping.is_set():
            return
        self._state.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> MockSource:
        if self._state is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _running(self) -> tuple[SourceState, Server]:
        if self._state is None or self._server is None:
            raise RuntimeError("MockSource not started")
        return self._state, self._server

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def host(self) -> str:
        """Host to connect to (a wildcard bind is reached via loopback)."""
        host = self.config.host
        if host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if host == "::":
            return "::1"
        return host

    @property
    def port(self) -> int:
        return self._running()[1].server_port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.config.tls_cert_file else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The events endpoint, e.g. ``http://127.0.0.1:PORT/events``."""
        return f"{self.base_url}/events"

    def stats(self, include_ids: bool = False, include_arrivals: bool = False) -> dict[str, Any]:
        """Same as ``GET /stats`` (``?ids=1`` when include_ids, ``?arrivals=1`` for the arrival times)."""
        return self._running()[0].stats(include_ids, include_arrivals)

    def reset_stats(self) -> None:
        """Same as ``POST /stats/reset``."""
        self._running()[0].recorder.reset()

    def control(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Same as ``POST /control``; raises ValueError where HTTP would 400."""
        state = self._running()[0]
        state.control(changes)
        return state.faults.describe()

    def describe(self) -> str:
        """The one-line start-up banner."""
        c = self.config
        return (
            f"mock source {c.name} listening on {self.url} "
            f"(backlog={c.backlog}, rate={c.rate:g}/s, "
            f"seed_batch={c.seed_batch if c.seed_batch is not None else 'off'}, "
            f"error_rate={c.error_rate:g}, latency_ms={c.latency_ms:g}, "
            f"rate_limit_rate={c.rate_limit_rate:g}, retry_after_s={c.retry_after_s}, "
            f"malformed_rate={c.malformed_rate:g}, random_seed={c.random_seed})"
        )


def serve_forever(config: MockSourceConfig, out: TextIO | None = None) -> None:
    """Run a source until SIGINT/SIGTERM, printing the banner line first."""
    stop = threading.Event()
    source = MockSource(config).start()
    try:
        print(source.describe(), file=out or sys.stdout, flush=True)
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                stop.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            # Short waits so the signal handler is run promptly on every platform.
            while not stop.wait(0.2):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        source.stop()
