"""What every part of the dev stack is handed: where to write (`Console`), whether the user asked
to stop (`Interrupts`), and where to register its stop (`Teardown`).

Signals only count (`Interrupts.on_signal`): printing or taking a lock in a handler could deadlock
with the code the signal interrupted. The start steps look at the count between steps, the waits
are cut short by it, and a further signal once stopping began means "do not wait politely".
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from types import FrameType
from typing import TextIO


class Interrupted(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived while starting up."""


class Console:
    """Our stdout, shared with Dagster's output: whole lines each, and no error if it is gone."""

    def __init__(self, stream: TextIO | None = None, prefix: str = "event-ingest dev: ") -> None:
        self._stream = stream
        self._prefix = prefix
        self._lock = threading.Lock()

    def say(self, message: str, prefix: bool = True) -> None:
        self.write(f"{self._prefix}{message}\n" if prefix else message + "\n")

    def write(self, text: str) -> bool:
        """False if our stdout is gone (a closed terminal or pipe)."""
        with self._lock:
            stream = self._stream if self._stream is not None else sys.stdout
            try:
                stream.write(text)
                stream.flush()
                return True
            except (OSError, ValueError):
                return False


class Interrupts:
    """How many stop signals arrived, and how many of them after stopping began."""

    def __init__(self) -> None:
        self.count = 0
        self._at_stop = 0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def check(self) -> None:
        """Raise Interrupted if a signal arrived (between start steps)."""
        if self.count:
            raise Interrupted()

    def sleep(self, seconds: float) -> None:
        """Sleep, cut short by a signal."""
        deadline = time.monotonic() + seconds
        while not self.count and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def stopping(self) -> None:
        """Stopping begins: from now on a further signal means hurry."""
        self._at_stop = self.count

    @property
    def hurry(self) -> bool:
        """Another Ctrl-C after stopping began: do not wait for graceful shutdowns."""
        return self.count > self._at_stop

    def wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        """Poll `done` until true or `timeout`; a further Ctrl-C after stopping began cuts it short."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline or self.hurry:
                return False
            time.sleep(0.1)
        return True


class Teardown(ExitStack):
    """The stops of what was started, run in reverse order on close; `clean` stays True only if
    every stop that reports went down cleanly."""

    def __init__(self) -> None:
        super().__init__()
        self.clean = True
        self.stops = 0  # of processes started (or being started): something to say "stopping" about

    def on_close(self, stop: Callable[[], bool]) -> None:
        """Run `stop` at close (last registered, first run); a False result marks it unclean."""

        def run() -> None:
            self.clean = stop() and self.clean

        self.stops += 1
        self.callback(run)
