"""A drain's values: what it is given, how it ended, its counters and live snapshot, and the seam to watch it.

* :class:`DrainStatus`: how a drain ended, one spelling (a ``str`` enum: logs, JSON and metadata read its value).
* :class:`Counters`: every count a drain, a host or a report window carries (events, pages, requests,
  errors, quarantined, polls, drain ends). Frozen, with ``+`` and ``-``: a host's totals are the sum of its
  drains', a report window is the difference of two totals.
* :class:`Progress`: a snapshot of a running drain (``Drain.progress()``), what outer layers read instead of
  reaching into a drain's parts.
* :class:`DrainStats`: the record of one drain, returned when it ends.
* :class:`DrainObserver`: the public seam for tests and the chaos harness, passed in :class:`DrainOptions`
  (what a drain is given: its lease settings, budget, tailing, backoff).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum

from ..config import LEASE_TTL_S, LEASE_WAIT_S
from .lease import BLOCK_S as LEASE_BLOCK_S
from .page import Page

WARNINGS_KEPT = 100
# Per-page lags a running drain keeps for the progress reports (a window's percentiles); older ones are dropped.
LAG_SAMPLES = 4096


class DrainStatus(str, Enum):
    """How a drain ended. A ``str`` so logs, JSON and metadata read its value."""

    CAUGHT_UP = "caught_up"  # an empty page: nothing new right now
    BUDGET_SPENT = "budget_spent"  # time budget used up; more may be waiting
    LEASE_BUSY = "lease_busy"  # another consumer is draining this source
    STOPPED = "stopped"  # asked to stop (a signal, a handoff to a successor)
    FENCED = "fenced"  # another consumer took over mid-drain; our last page was rolled back
    LEASE_LOST = "lease_lost"  # our lease expired/was taken; stopped before the next request
    SOURCE_ERROR = "source_error"  # the source kept failing (retries spent) or answered unusably
    STUCK = "stuck"  # the page at the cursor stops before an item with no readable id: nothing can move
    REDIS_DOWN = "redis_unavailable"  # no gate, no lease: stop requesting rather than guess
    POSTGRES_DOWN = "postgres_unavailable"

    def __str__(self) -> str:
        return self.value

    @property
    def ok(self) -> bool:
        return self in (DrainStatus.CAUGHT_UP, DrainStatus.BUDGET_SPENT, DrainStatus.LEASE_BUSY, DrainStatus.STOPPED)


@dataclass(frozen=True)
class Counters:
    """Counts of work done: by one drain, by every drain of a host, or over one report window."""

    events_stored: int = 0
    events_already_stored: int = 0
    quarantined: int = 0
    pages: int = 0
    empty_polls: int = 0
    requests: int = 0  # requests sent (the client counts them as they go out)
    errors: int = 0  # attempts that were sent and failed
    drain_ends: Mapping[DrainStatus, int] = field(default_factory=dict)  # how many drains ended how

    def __add__(self, other: Counters) -> Counters:
        ends = Counter(self.drain_ends)
        ends.update(other.drain_ends)
        return self._combine(other, 1, dict(ends))

    def __sub__(self, other: Counters) -> Counters:
        ends = {k: v - other.drain_ends.get(k, 0) for k, v in self.drain_ends.items()}
        return self._combine(other, -1, {k: v for k, v in ends.items() if v})

    def _combine(self, other: Counters, sign: int, drain_ends: Mapping[DrainStatus, int]) -> Counters:
        return Counters(
            events_stored=self.events_stored + sign * other.events_stored,
            events_already_stored=self.events_already_stored + sign * other.events_already_stored,
            quarantined=self.quarantined + sign * other.quarantined,
            pages=self.pages + sign * other.pages,
            empty_polls=self.empty_polls + sign * other.empty_polls,
            requests=self.requests + sign * other.requests,
            errors=self.errors + sign * other.errors,
            drain_ends=drain_ends,
        )

    @classmethod
    def ended(cls, status: DrainStatus) -> Counters:
        return cls(drain_ends={status: 1})


_COUNTS = [f.name for f in fields(Counters) if f.name != "drain_ends"]


@dataclass(frozen=True)
class Progress:
    """A running drain, as of one moment (``Drain.progress()``)."""

    source: str
    consumer: str  # this drain's id: its lease and gate token
    epoch: int | None  # None while standing by on the lease
    cursor: int | None
    counts: Counters
    caught_up: bool = False
    stuck: str | None = None
    lags_s: tuple[float, ...] = ()  # per-page lags committed since the time asked for (``progress(lags_since)``)

    @property
    def state(self) -> str:
        """draining (the epoch is ours) or standby (waiting on the lease)."""
        return "draining" if self.epoch is not None else "standby"


@dataclass
class DrainStats:
    """The record of one drain: how it ended, what it counted, and its figures."""

    source: str
    status: DrainStatus | None = None
    error: str | None = None
    consumer: str = ""
    epoch: int | None = None
    cursor_before: int | None = None
    cursor_after: int | None = None
    counts: Counters = Counters()
    retry_after_s: float = 0.0
    min_gap_ms: float | None = None
    median_gap_ms: float | None = None
    lease_wait_s: float = 0.0
    duration_s: float = 0.0
    lag_s: float | None = None  # age of the newest event committed, when its payload says when it was made
    caught_up: bool = False  # the last poll found nothing new
    stuck: str | None = None  # the last page stopped before an item it cannot read, moving nothing: why
    last_error: str | None = None  # the latest failed attempt, even if a retry then worked
    warnings: list[str] = field(default_factory=list)
    warnings_dropped: int = 0  # beyond the first WARNINGS_KEPT

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status.ok

    # The counts, read as the record's own (what the CLI prints and tests assert on).
    events_stored = property(lambda self: self.counts.events_stored)
    events_already_stored = property(lambda self: self.counts.events_already_stored)
    quarantined = property(lambda self: self.counts.quarantined)
    pages = property(lambda self: self.counts.pages)
    empty_polls = property(lambda self: self.counts.empty_polls)
    requests = property(lambda self: self.counts.requests)
    errors = property(lambda self: self.counts.errors)

    def warn(self, text: str) -> None:
        # A tailing drain lives for hours: keep the first warnings, count the rest.
        if len(self.warnings) < WARNINGS_KEPT:
            self.warnings.append(text)
        else:
            self.warnings_dropped += 1

    def set_gaps(self, request_starts: list[float]) -> None:
        """The spacing figures, from the monotonic send times of the requests."""
        gaps = [(b - a) * 1000 for a, b in zip(request_starts, request_starts[1:])]
        if gaps:
            self.min_gap_ms = round(min(gaps), 3)
            self.median_gap_ms = round(statistics.median(gaps), 3)

    def to_dict(self) -> dict:
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "counts"}
        flat.update((name, getattr(self.counts, name)) for name in _COUNTS)
        return flat

    def summary(self) -> str:
        gap = f"{self.min_gap_ms:.1f}" if self.min_gap_ms is not None else "-"
        text = (
            f"source {self.source}: {self.status}; {self.events_stored} events stored in {self.pages} pages, "
            f"{self.requests} requests ({self.errors} failed), cursor {self.cursor_before} -> {self.cursor_after}, "
            f"min gap {gap} ms, {self.duration_s:.1f}s"
        )
        if self.quarantined:
            text += f", {self.quarantined} quarantined"
        if self.error:
            text += f"; error: {self.error}"
        return text


def lag_s(page: Page) -> float | None:
    """Age of the newest event, if its payload says when it was made (the mock source's do)."""
    if not page.events:
        return None
    try:
        payload = json.loads(page.events[-1].payload_json)
        created = float(payload["created_at"])
    except (ValueError, TypeError, KeyError):
        return None
    return max(0.0, time.time() - created)


class DrainObserver:
    """The one seam to watch a drain from outside, passed as ``DrainOptions(observer=...)``: subclass it
    and override what you need (every method is a no-op here). Tests and the chaos harness use it to act
    between two steps (take the source over after a page is fetched, hold still before a commit); the
    drain calls it from its own thread, and waits while a method runs. Nothing in production sets one."""

    def fetched(self, progress: Progress, page: Page) -> None:
        """A non-empty page is in hand, not committed yet."""

    def committed(self, progress: Progress) -> None:
        """The page was committed (``progress`` counts it)."""

    def commit_failed(self, progress: Progress, status: DrainStatus) -> None:
        """The commit did not land (fenced, Postgres down): the drain ends with ``status``."""

    def ended(self, stats: DrainStats) -> None:
        """The drain ended (its log line is written); ``stats`` is what ``run()`` returns."""


@dataclass(frozen=True)
class DrainOptions:
    lease_ttl_s: float = LEASE_TTL_S  # a dead holder's source is free again after this long
    lease_wait_s: float = LEASE_WAIT_S  # math.inf: stand by on the lease until it frees up or we are stopped
    lease_block_s: float = LEASE_BLOCK_S  # a standby looks at a busy lease again at least this often
    max_seconds: float | None = None  # default: the source's max_run_seconds; math.inf: until stopped
    tail: bool = False  # keep polling when caught up, instead of ending
    backoff_base_s: float = 0.25
    backoff_max_s: float = 10.0
    mark_polled_every_s: float = 5.0  # while tailing an idle source, tell Postgres it is still polled
    observer: DrainObserver = DrainObserver()  # the seam for tests and the chaos harness (progress.py)
