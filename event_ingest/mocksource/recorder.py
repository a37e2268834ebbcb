"""What a mock source saw: request arrivals (the spacing judge: kernel receive times), statuses, faults, served ids."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem


class Recorder:
    """What the source saw: arrivals, statuses, faults and served ids."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per /events request: (handler stamp, kernel receive stamp or None, lastId as asked), in handling order.
        self._requests: list[tuple[float, float | None, str | None]] = []
        self._statuses: Counter[int] = Counter()
        self._faults: Counter[str] = Counter()
        # Count per id rather than a set: a failed write must undo only its own
        # contribution when another response carried the same id successfully.
        self._served: Counter[int] = Counter()
        self._last_headers: dict[str, str] = {}
        self._last_ids: list[int] = []  # the lastId of each /events request read, in order

    def arrival(self, at: float, kernel: float | None = None, query: str = "") -> None:
        last_id = next((v for k, _, v in (p.partition("=") for p in query.split("&")) if k == "lastId"), None)
        with self._lock:
            self._requests.append((at, kernel, last_id))

    def status(self, code: int) -> None:
        with self._lock:
            self._statuses[code] += 1

    def request_headers(self, headers: SupportsKeysAndGetItem[str, str]) -> None:
        """The headers of the latest /events request (an ``email.message.Message`` from http.server)."""
        with self._lock:
            self._last_headers = dict(headers)

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def last_id(self, value: int) -> None:
        with self._lock:
            self._last_ids.append(value)

    def served(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._served.update(ids)

    def unserved(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._served.subtract(ids)
            for i in ids:
                if self._served[i] <= 0:
                    del self._served[i]

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._statuses.clear()
            self._faults.clear()
            self._served.clear()
            self._last_headers = {}
            self._last_ids.clear()

    def snapshot(self, min_interval_ms: float, include_ids: bool, include_arrivals: bool = False) -> dict[str, Any]:
        with self._lock:
            requests = list(self._requests)
            statuses = {str(k): v for k, v in sorted(self._statuses.items())}
            faults = dict(sorted(self._faults.items()))
            served = sorted(self._served)
            last_headers = dict(self._last_headers)
            last_ids = list(self._last_ids)
        # The rule is judged on when a request reached the source: the kernel's receive time of its bytes
        # (arrival.py), where the kernel gave one (not on TLS); the handler's stamp otherwise. The
        # handler's stamps are kept beside: they show how late a busy source read what it was sent.
        # Handler threads append in the order they got the lock, which may differ from arrival order by
        # microseconds: sort before diffing.
        arrivals = sorted(k if k is not None else a for a, k, _ in requests)
        handler = sorted(a for a, _, _ in requests)
        gaps = _gaps_ms(arrivals)
        handler_gaps = _gaps_ms(handler)
        kernel_stamped = sum(1 for _, k, _ in requests if k is not None)
        stats: dict[str, Any] = {
            "requests": len(arrivals),
            # First to last arrival: the span a rate at the source is measured over.
            "arrival_span_s": round(arrivals[-1] - arrivals[0], 6) if len(arrivals) > 1 else None,
            "min_gap_ms": round(min(gaps), 3) if gaps else None,
            "median_gap_ms": round(statistics.median(gaps), 3) if gaps else None,
            # Named after the project rule; the threshold is min_interval_ms
            # (reported alongside) and is 200 unless configured otherwise.
            "gaps_under_200ms": sum(1 for g in gaps if g < min_interval_ms),
            "judged_on": "kernel receive time"
            if kernel_stamped == len(requests)
            else ("handler stamp" if not kernel_stamped else "kernel receive time where stamped, else handler stamp"),
            "handler_min_gap_ms": round(min(handler_gaps), 3) if handler_gaps else None,
            "handler_gaps_under_200ms": sum(1 for g in handler_gaps if g < min_interval_ms),
            "min_interval_ms": min_interval_ms,
            "statuses": statuses,
            "faults": faults,
            "served_ids_count": len(served),
            "served_max_id": served[-1] if served else None,
            "last_request_headers": last_headers,
        }
        if include_ids:
            stats["served_ids"] = served
            stats["last_ids"] = last_ids
        if include_arrivals:
            # time.monotonic() of this host; "clock" turns them into wall time (wall - monotonic).
            stats["arrivals"] = arrivals
            stats["handler_arrivals"] = handler
            stats["arrival_log"] = [{"at": a, "kernel": k, "last_id": q} for a, k, q in requests]
            stats["clock"] = {"monotonic": time.monotonic(), "wall": time.time()}
        return stats


def _gaps_ms(stamps: list[float]) -> list[float]:
    return [(b - a) * 1000.0 for a, b in zip(stamps, stamps[1:])]
