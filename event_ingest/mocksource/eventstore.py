"""Which events a mock source has: the backlog, live events at their scheduled times, seed mode."""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

from event_ingest.mocksource.config import MAX_ID


class EventStore:
    """Ids are consecutive, so only creation times are stored (8 bytes/event).

    Backlog events share the start time and are never materialised, which keeps
    a multi-million-event backlog for benchmarks cheap.

    Live events (``rate`` per second) are made when someone looks, not by a thread:
    event k of a producing stretch is created at stretch start + k / rate, and
    exists for every request that arrives after that moment. Exact times, no drift,
    and a fleet of mocks costs nothing while nobody asks.
    """

    def __init__(
        self,
        name: str,
        backlog: int,
        seed_batch: int | None,
        rate: float = 0.0,
        producing: Callable[[], bool] = lambda: True,
    ) -> None:
        self._name = name
        self._backlog = backlog
        self._seed_batch = seed_batch
        self._started_at = time.time()
        self._live = array("d")
        self._lock = threading.Lock()
        self._rate = rate
        self._producing = producing
        self._stretch_start: float | None = self._started_at if rate > 0 else None  # None: paused
        self._stretch_made = 0  # events made in the current stretch

    def _catch_up(self) -> None:
        """Make every event due by now (call with the lock held)."""
        if self._rate <= 0:
            return
        now = time.time()
        if not self._producing():
            if self._stretch_start is not None:
                self._make_due(self._stretch_start, now)
                self._stretch_start = None  # paused: a resume starts a new stretch, with no burst
            return
        if self._stretch_start is None:
            self._stretch_start, self._stretch_made = now, 0
        self._make_due(self._stretch_start, now)

    def _make_due(self, start: float, now: float) -> None:
        """Make the current stretch's events due by ``now`` (``start``: the stretch's)."""
        due = int((now - start) * self._rate)
        if due > self._stretch_made:
            rate = self._rate
            self._live.extend(start + k / rate for k in range(self._stretch_made + 1, due + 1))
            self._stretch_made = due

    def settle(self) -> None:
        """Make what is due now under the current producing state (before and after it changes)."""
        with self._lock:
            self._catch_up()

    def max_id(self) -> int | None:
        """Highest existing id; None in seed mode, where ids are invented on demand."""
        if self._seed_batch is not None:
            return None
        with self._lock:
            self._catch_up()
            return self._backlog + len(self._live)

    def append(self, count: int) -> None:
        now = time.time()
        with self._lock:
            self._catch_up()
            self._live.extend([now] * count)

    def query(self, last_id: int, limit: int) -> list[dict[str, Any]]:
        if self._seed_batch is not None:
            # The PHP mocks answered exactly K events after any cursor,
            # whatever limit said; reproduce that faithfully.
            now = time.time()
            first = last_id + 1
            last = min(last_id + self._seed_batch, MAX_ID)
            return [self._event(i, now) for i in range(first, last + 1)]
        with self._lock:
            self._catch_up()
            last = min(self._backlog + len(self._live), last_id + limit)
            created = [
                self._started_at if i <= self._backlog else self._live[i - self._backlog - 1]
                for i in range(last_id + 1, last + 1)
            ]
        return [self._event(last_id + 1 + n, t) for n, t in enumerate(created)]

    def _event(self, event_id: int, created_at: float) -> dict[str, Any]:
        return {
            "id": event_id,
            "payload": {"created_at": created_at, "source": self._name, "seq": event_id},
        }
