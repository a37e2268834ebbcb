"""The drain: one consumer's turn at one source.

lease -> epoch bump (fence) -> loop { gate -> fetch -> commit } -> release.

A drain either ends when the source is caught up (an empty page; ``event-ingest
ingest`` and a one-off materialization) or *tails* it (``tail=True``): on an
empty page it keeps polling at the spacing limit (or the source's slower
``idle_poll_ms``) until its budget ends or it is told to stop. Tailing is what
a long-lived ingest run does, so a new event waits one poll, not one Dagster run.

With ``lease_wait_s=math.inf`` a drain stands by on the lease until the holder
lets go: that is how a successor run (or a second deployment) takes a source
over within one lease poll of a handoff, or one lease TTL of a crash.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import socket
import statistics
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum

import redis

from ..config import LEASE_TTL_S, LEASE_WAIT_S, SourceConfig
from .client import Kind, SourceClient
from .gate import Gate, GateUnavailable
from .lease import BLOCK_S as LEASE_BLOCK_S
from .lease import Lease, LeaseUnavailable
from .page import Page
from .store import Fenced, Store, StoreError
from .store.reads import STOPS_BEFORE_PHRASE

log = logging.getLogger(__name__)
# One JSON line per request at DEBUG (its gate slot, send and close times, epoch, cursor, outcome), for
# whoever must explain a gap seen at a source (the chaos harness turns it on); off, it costs one check.
trace = logging.getLogger("event_ingest.trace")


class DrainStatus(str, Enum):
    """How a drain ended. A ``str`` so logs, JSON and comparisons with plain strings read naturally."""

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
        return self in _OK


_OK = {DrainStatus.CAUGHT_UP, DrainStatus.BUDGET_SPENT, DrainStatus.LEASE_BUSY, DrainStatus.STOPPED}

# The names the rest of the project (and its tests) import.
CAUGHT_UP, BUDGET_SPENT, LEASE_BUSY, STOPPED = (
    DrainStatus.CAUGHT_UP,
    DrainStatus.BUDGET_SPENT,
    DrainStatus.LEASE_BUSY,
    DrainStatus.STOPPED,
)
FENCED, LEASE_LOST, SOURCE_ERROR = DrainStatus.FENCED, DrainStatus.LEASE_LOST, DrainStatus.SOURCE_ERROR
STUCK = DrainStatus.STUCK
REDIS_DOWN, POSTGRES_DOWN = DrainStatus.REDIS_DOWN, DrainStatus.POSTGRES_DOWN
OK_STATUSES = frozenset(_OK)

WARNINGS_KEPT = 100

# Per-page lags kept for the progress reports (a window's percentiles); older ones are dropped.
LAG_SAMPLES = 4096


@dataclass
class DrainStats:
    source: str
    status: DrainStatus | None = None
    error: str | None = None
    consumer: str = ""
    epoch: int | None = None
    cursor_before: int | None = None
    cursor_after: int | None = None
    events_stored: int = 0
    events_already_stored: int = 0
    quarantined: int = 0
    pages: int = 0
    empty_polls: int = 0
    requests: int = 0
    errors: int = 0
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
    # (wall time of the commit, lag in s) per page, for progress windows; not part of to_dict().
    lag_samples: deque = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES), repr=False)

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status.ok

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lag_samples"}

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


@dataclass
class DrainHooks:
    """Points where tests and the chaos harness can step in (never used in production paths)."""

    after_fetch: Callable[[DrainStats, Page], None] | None = None
    after_commit: Callable[[DrainStats], None] | None = None


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


def consumer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _gaps_ms(starts: list[float]) -> list[float]:
    return [(b - a) * 1000 for a, b in zip(starts, starts[1:])]


def _lag_s(page: Page) -> float | None:
    """Age of the newest event, if its payload says when it was made (the mock source's do)."""
    if not page.events:
        return None
    try:
        payload = json.loads(page.events[-1].payload_json)
        created = float(payload["created_at"])
    except (ValueError, TypeError, KeyError):
        return None
    return max(0.0, time.time() - created)


class _DrainLog(logging.LoggerAdapter):
    """Every line of a drain names the source, the epoch and the cursor: one grep follows a source
    through handoffs and faults."""

    def __init__(self, logger, drain: Drain) -> None:
        super().__init__(logger, {})
        self.drain = drain

    def process(self, msg, kwargs):
        d = self.drain
        return (
            f"source={d.source.name} epoch={d.stats.epoch if d.stats.epoch is not None else '-'} "
            f"cursor={d.cursor if d.cursor is not None else '-'}: {msg}",
            kwargs,
        )


class _End(Exception):
    """How the drain ends: raised from anywhere in the loop, caught once in run()."""

    def __init__(self, status: DrainStatus, error: str | None = None) -> None:
        super().__init__(status, error)
        self.status = status
        self.error = error


class Drain:
    """One drain of one source: holds its source, stats, store, lease, gate, client and deadline."""

    def __init__(
        self,
        source: SourceConfig,
        *,
        store: Store,
        redis_client: redis.Redis,
        options: DrainOptions = DrainOptions(),
        hooks: DrainHooks = DrainHooks(),
        should_stop: Callable[[], bool] = lambda: False,
        logger: logging.Logger | logging.LoggerAdapter = log,
    ) -> None:
        self.source = source
        self.store = store
        self.options = options
        self.hooks = hooks
        self.should_stop = should_stop
        self.stats = DrainStats(source=source.name, consumer=consumer_id())
        self.cursor: int | None = None
        self.log = _DrainLog(logger, self)
        self.lease = Lease(
            redis_client,
            source.name,
            ttl_s=options.lease_ttl_s,
            wait_s=options.lease_wait_s,
            block_s=options.lease_block_s,
        )
        # The reservation outlives the longest request: timeout plus one interval.
        gate = Gate(
            redis_client,
            source.name,
            interval_s=source.min_interval_s,
            hold_s=source.timeout_s + source.min_interval_s,
            token=self.stats.consumer,
        )
        self.client = SourceClient(source, gate)
        budget = options.max_seconds if options.max_seconds is not None else source.max_run_seconds
        self.budget_s = budget
        self.deadline = math.inf
        self._last_marked = -math.inf
        self._counted_requests = 0  # requests already added to Postgres' counters by a write of this drain

    # -- the drain ---------------------------------------------------------------------------

    def run(self) -> DrainStats:
        """Never raises for source/store/Redis trouble: ``stats.status`` says how it ended, ``error`` why."""
        started = time.monotonic()
        self.deadline = started + self.budget_s
        acquired = False
        try:
            try:
                acquired = self._take_over()
                self._loop()
            except _End as end:
                self.stats.status, self.stats.error = end.status, end.error
        finally:
            # The gate first: an unused reserved slot goes back before the lease does, so the successor that
            # takes the lease is granted that slot, not made to wait for it to lapse.
            self.client.close()
            if acquired:
                self.lease.release()
            self._count_last_requests()
            self.stats.requests = self.client.requests
            gaps = _gaps_ms(list(self.client.request_starts))
            if gaps:
                self.stats.min_gap_ms = round(min(gaps), 3)
                self.stats.median_gap_ms = round(statistics.median(gaps), 3)
            self.stats.duration_s = round(time.monotonic() - started, 3)
        (self.log.info if self.stats.ok else self.log.warning)(self.stats.summary())
        return self.stats

    def _take_over(self) -> bool:
        """The lease, then the fence: from the epoch bump on, every earlier holder's commit is refused."""
        started = time.monotonic()
        try:
            acquired = self.lease.acquire(should_stop=self._stopping)
        except LeaseUnavailable as exc:
            raise _End(REDIS_DOWN, str(exc)) from None
        self.stats.lease_wait_s = round(time.monotonic() - started, 3)
        if not acquired:
            raise _End(STOPPED if self._stopping() else LEASE_BUSY)
        try:
            self.store.ensure_source(self.source.name)
            self.stats.epoch, self.cursor = self.store.begin_epoch(self.source.name)
        except StoreError as exc:
            self.lease.release()
            raise _End(POSTGRES_DOWN, str(exc)) from None
        self.stats.cursor_before = self.stats.cursor_after = self.cursor
        return True

    def _stopping(self) -> bool:
        return self.should_stop() or time.monotonic() >= self.deadline

    def _loop(self) -> None:
        while True:
            if self.should_stop():
                raise _End(STOPPED)
            if time.monotonic() >= self.deadline:
                raise _End(BUDGET_SPENT)
            page = self._fetch()
            for warning in page.warnings:
                self.log.warning("page at lastId=%s: %s", self.cursor, warning)
                self._warn(f"lastId={self.cursor}: {warning}")
            if page.empty:
                self._caught_up()
                continue
            if self.hooks.after_fetch:
                self.hooks.after_fetch(self.stats, page)
            moved = self._commit(page)
            if self.hooks.after_commit:
                self.hooks.after_commit(self.stats)
            if not moved and _stops_before_unreadable(page):
                self._stuck()
            elif not moved:
                # Only ids at or below the cursor: the source re-served old events. Asking again with
                # the same lastId would get the same page; nothing is new.
                self._warn(f"lastId={self.cursor}: page held no id above the cursor; treated as caught up")
                self._caught_up()

    def _warn(self, text: str) -> None:
        # A tailing drain lives for hours: keep the first warnings, count the rest.
        if len(self.stats.warnings) < WARNINGS_KEPT:
            self.stats.warnings.append(text)
        else:
            self.stats.warnings_dropped += 1

    def _commit(self, page: Page) -> bool:
        """One page, one transaction, fenced. Returns whether the cursor moved."""
        new_cursor = page.next_cursor(self.cursor)
        try:
            requests = self._uncounted()
            result = self.store.commit_page(
                self.source.name,
                epoch=self.stats.epoch,
                old_cursor=self.cursor,
                new_cursor=new_cursor,
                events=page.events,
                quarantined=page.quarantined,
                requests=requests,
            )
        except Fenced as exc:
            raise _End(FENCED, str(exc)) from None
        except StoreError as exc:
            # The commit may or may not have landed; the next drain reads the cursor from Postgres either way.
            raise _End(POSTGRES_DOWN, str(exc)) from None
        self._counted_requests += requests
        moved = new_cursor > self.cursor
        self.cursor = self.stats.cursor_after = new_cursor
        stats = self.stats
        stats.pages += 1
        stats.events_stored += result.inserted
        stats.events_already_stored += result.already_stored
        stats.quarantined += result.quarantined
        stats.caught_up = False
        if moved:
            stats.stuck = None
        stats.lag_s = _lag_s(page)
        if stats.lag_s is not None:
            stats.lag_samples.append((time.time(), stats.lag_s))
        return moved

    def _caught_up(self) -> None:
        """Nothing new: end here, or (tailing) note it and poll again at the idle pace."""
        self.stats.caught_up = True
        self.stats.stuck = None
        self.stats.lag_s = 0.0
        if not self.options.tail:
            self._end_polled(CAUGHT_UP)
        self._poll_again()

    def _stuck(self) -> None:
        """The page at the cursor stops before an item that cannot be read and has no readable id (kept in
        quarantine), so nothing moves: the source may hold good pages after it, and this drain cannot reach
        them. A one-off drain ends here, not ok (asking again gets the same page); a tailing one says so and
        polls on at the idle pace, so it moves on as soon as the source serves something else."""
        name = self.source.name
        reason = (
            f"source {name!r} at lastId={self.cursor}: stuck before an item that cannot be read and has no "
            f"readable id (kept in quarantine: `event-ingest quarantine list {name}`); move past it with "
            f"`event-ingest skip {name} --to-id N`"
        )
        self.stats.caught_up = False
        first, self.stats.stuck = self.stats.stuck is None, reason
        if not self.options.tail:
            self._end_polled(STUCK, reason)
        if first:
            self.log.warning("%s; polling on", reason)
        self._poll_again()

    def _end_polled(self, status: DrainStatus, error: str | None = None) -> None:
        # Freshness and stuck detection see the poll; the drain's work is done whatever the mark says.
        try:
            self._mark_polled()
        except _End as end:
            self.log.warning("poll not marked in Postgres: %s", end.error)
        raise _End(status, error)

    def _poll_again(self) -> None:
        """Tailing: count the poll, tell Postgres now and then, and wait out the source's idle pace."""
        self.stats.empty_polls += 1
        if time.monotonic() - self._last_marked >= self.options.mark_polled_every_s:
            self._mark_polled()
        # The gate already spaces polls by min_interval; a source that asks to be polled less often is
        # asked again idle_poll after this poll's response began (as the gate counts: the request reached
        # the source before its response came back, so the pace holds at the source too).
        if self.source.idle_poll_s > self.source.min_interval_s and self.client.last_closed is not None:
            self._sleep(self.client.last_closed + self.source.idle_poll_s - time.monotonic())

    def _mark_polled(self) -> None:
        requests = self._uncounted()
        try:
            marked = self.store.mark_polled(self.source.name, self.stats.epoch, requests=requests)
        except StoreError as exc:
            raise _End(POSTGRES_DOWN, str(exc)) from None
        if not marked:
            # Taken over while idle (a replay, a skip, another consumer): no commit would tell us, and
            # polling on at the old cursor would never fetch what the new epoch's cursor asks for.
            raise _End(
                FENCED,
                f"source {self.source.name!r}: poll mark refused by the fence (epoch "
                f"{self.stats.epoch}): the source was taken over",
            )
        self._counted_requests += requests
        self._last_marked = time.monotonic()

    def _uncounted(self) -> int:
        return self.client.requests - self._counted_requests

    def _record_failure(self, outcome) -> None:
        """One write per failed attempt: the counters, the reason, and the body if it was not a page."""
        requests = self._uncounted()
        try:
            self.store.record_failure(
                self.source.name,
                requests=requests,
                error=outcome.reason,
                bad_body=outcome.bad_body,
                at_cursor=self.cursor,
            )
        except StoreError as exc:
            if outcome.bad_body is not None:  # bytes received must be kept: no request goes on without that
                raise _End(POSTGRES_DOWN, str(exc)) from None
            self.log.warning("failure not counted in Postgres (%s); counted with the next write", exc)
            return
        self._counted_requests += requests
        if outcome.bad_body is not None:
            self.stats.quarantined += 1

    def _count_last_requests(self) -> None:
        """The requests no write counted yet (a drain stopped, out of budget or fenced since its last write),
        best effort."""
        requests = self._uncounted()
        if requests <= 0 or self.stats.epoch is None:
            return
        try:
            self.store.record_requests(self.source.name, requests)
            self._counted_requests += requests
        except StoreError as exc:
            self.log.warning("last %d requests not counted in Postgres (%s)", requests, exc)

    def _trace(self, outcome) -> None:
        line = {
            "src": self.source.name,
            "consumer": self.stats.consumer,
            "epoch": self.stats.epoch,
            "last_id": self.cursor,
            "kind": outcome.kind.value,
            "sent": outcome.sent,
            "status": outcome.status,
            "reason": outcome.reason or None,
            **(dataclasses.asdict(outcome.timeline) if outcome.timeline is not None else {}),
        }
        trace.debug("%s", json.dumps(line))

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake for a stop request or the deadline."""
        until = min(time.monotonic() + seconds, self.deadline)
        while not self.should_stop():
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def _fetch(self) -> Page:
        """The one retry policy: transient failures back off exponentially (with jitter) and retry through
        the gate; a Retry-After is honoured (the gate already moved every consumer's next slot). Only
        requests that were sent count as attempts: a slot given back unsent is asked for again."""
        source, stats = self.source, self.stats
        attempt = 0
        while True:
            if self.lease.lost:
                raise _End(LEASE_LOST, f"source {source.name!r}: lease lost; stopped before the next request")
            max_wait = (
                None if math.isinf(self.deadline) else max(self.deadline - time.monotonic(), 0.0) + source.timeout_s
            )
            try:
                outcome = self.client.fetch(
                    self.cursor, max_wait_s=max_wait, should_stop=lambda: self.should_stop() or self.lease.lost
                )
            except GateUnavailable as exc:
                raise _End(REDIS_DOWN, str(exc)) from None
            if outcome is None:
                if self.lease.lost:
                    raise _End(LEASE_LOST, f"source {source.name!r}: lease lost while waiting for a slot")
                raise _End(STOPPED if self.should_stop() else BUDGET_SPENT)
            if trace.isEnabledFor(logging.DEBUG):
                self._trace(outcome)
            if outcome.kind is Kind.OK:
                return outcome.page
            if not outcome.sent:
                # Nothing reached the source: no attempt used, no error to count, no backoff.
                self.log.warning("%s", outcome.reason)
                continue
            attempt += 1
            stats.errors += 1
            stats.last_error = outcome.reason
            self._record_failure(outcome)
            if outcome.kind is Kind.FATAL:
                raise _End(SOURCE_ERROR, f"source {source.name!r} at lastId={self.cursor}: {outcome.reason}")
            self.log.warning(
                "attempt %d/%d at lastId=%s failed: %s", attempt, source.max_attempts, self.cursor, outcome.reason
            )
            if attempt >= source.max_attempts:
                raise _End(
                    SOURCE_ERROR,
                    f"source {source.name!r} at lastId={self.cursor}: {source.max_attempts} "
                    f"attempts failed, last: {outcome.reason}",
                )
            if outcome.retry_after_s is not None:
                stats.retry_after_s += outcome.retry_after_s
                if time.monotonic() + outcome.retry_after_s > self.deadline:
                    raise _End(
                        SOURCE_ERROR, f"source {source.name!r} asked to wait {outcome.retry_after_s:g}s (Retry-After)"
                    )
                continue  # the gate holds everyone back until then
            delay = min(self.options.backoff_max_s, self.options.backoff_base_s * 2 ** (attempt - 1))
            self._sleep(delay * random.uniform(0.5, 1.0))


def _stops_before_unreadable(page: Page) -> bool:
    """The page stopped before an item it could not read, whose id is unknown (page.py's salvage)."""
    return any(q.event_id is None and STOPS_BEFORE_PHRASE in q.reason for q in page.quarantined)


def drain(
    source: SourceConfig,
    *,
    store: Store,
    redis_client: redis.Redis,
    options: DrainOptions = DrainOptions(),
    hooks: DrainHooks = DrainHooks(),
    should_stop: Callable[[], bool] = lambda: False,
    logger: logging.Logger | logging.LoggerAdapter = log,
) -> DrainStats:
    """Drain one source until caught up (or, tailing, until stopped) or out of time."""
    return Drain(
        source,
        store=store,
        redis_client=redis_client,
        options=options,
        hooks=hooks,
        should_stop=should_stop,
        logger=logger,
    ).run()
