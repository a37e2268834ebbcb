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
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any

import redis

from ..config import SourceConfig
from .client import Kind, Outcome, SourceClient
from .gate import GateUnavailable
from .lease import Lease, LeaseUnavailable
from .page import Page
from .progress import LAG_SAMPLES, Counters, DrainObserver, DrainOptions, DrainStats, DrainStatus, Progress, lag_s
from .retry import after_failure
from .store import Fenced, Store, StoreError
from .store.reads import STOPS_BEFORE_PHRASE
from .writes import CountedWrites

log = logging.getLogger(__name__)


def consumer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _DrainLog(logging.LoggerAdapter):
    """Every line of a drain names the source, the epoch and the cursor: one grep follows a source
    through handoffs and faults."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, drain: Drain) -> None:
        super().__init__(logger, {})
        self.drain = drain

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
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
    """One drain of one source: holds its source, stats, store, lease, client and deadline."""

    def __init__(
        self,
        source: SourceConfig,
        *,
        store: Store,
        redis_client: redis.Redis,
        options: DrainOptions = DrainOptions(),
        should_stop: Callable[[], bool] = lambda: False,
        logger: logging.Logger | logging.LoggerAdapter = log,
    ) -> None:
        self.source = source
        self.store = store
        self.options = options
        self.observer = options.observer
        # Production sets none: then no snapshot is built for it on every page (the ingest loop's hot path).
        self._watched = type(options.observer) is not DrainObserver
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
        self.client = SourceClient.through_gate(source, redis_client, token=self.stats.consumer, logger=self.log)
        self.writes = CountedWrites(store, source.name, lambda: self.client.requests)
        budget = options.max_seconds if options.max_seconds is not None else source.max_run_seconds
        self.budget_s = budget
        self.deadline = math.inf
        self._last_marked = -math.inf
        self._last_answer: float | None = None  # monotonic: when the latest good response began
        # (wall time of the commit, lag in s) per page, for progress windows.
        self._lags: deque[tuple[float, float]] = deque(maxlen=LAG_SAMPLES)

    # -- what it did, for outer layers ---------------------------------------------------------

    def counts(self) -> Counters:
        """The drain's counters so far, the requests the client sent included."""
        return dataclasses.replace(self.stats.counts, requests=self.client.requests)

    def progress(self, lags_since: float | None = None) -> Progress:
        """A snapshot, read from any thread; with ``lags_since`` (wall time), the page lags since then."""
        stats = self.stats
        lags = tuple(lag for at, lag in list(self._lags) if at > lags_since) if lags_since is not None else ()
        return Progress(
            stats.source, stats.consumer, stats.epoch, self.cursor, self.counts(), stats.caught_up, stats.stuck, lags
        )

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
            self.stats.counts = self.counts()
            self.stats.set_gaps(list(self.client.request_starts))
            self.stats.duration_s = round(time.monotonic() - started, 3)
        (self.log.info if self.stats.ok else self.log.warning)(self.stats.summary())
        self.observer.ended(self.stats)
        return self.stats

    def _take_over(self) -> bool:
        """The lease, then the fence: from the epoch bump on, every earlier holder's commit is refused."""
        started = time.monotonic()
        try:
            acquired = self.lease.acquire(should_stop=self._stopping)
        except LeaseUnavailable as exc:
            raise _End(DrainStatus.REDIS_DOWN, str(exc)) from None
        self.stats.lease_wait_s = round(time.monotonic() - started, 3)
        if not acquired:
            raise _End(DrainStatus.STOPPED if self._stopping() else DrainStatus.LEASE_BUSY)
        try:
            self.store.ensure_source(self.source.name)
            self.stats.epoch, self.cursor = self.store.begin_epoch(self.source.name)
        except StoreError as exc:
            self.lease.release()
            raise _End(DrainStatus.POSTGRES_DOWN, str(exc)) from None
        self.stats.cursor_before = self.stats.cursor_after = self.cursor
        return True

    def _stopping(self) -> bool:
        return self.should_stop() or time.monotonic() >= self.deadline

    def _loop(self) -> None:
        while True:
            if self.should_stop():
                raise _End(DrainStatus.STOPPED)
            if time.monotonic() >= self.deadline:
                raise _End(DrainStatus.BUDGET_SPENT)
            page = self._fetch()
            for warning in page.warnings:
                self.log.warning("page at lastId=%s: %s", self.cursor, warning)
                self.stats.warn(f"lastId={self.cursor}: {warning}")
            if page.empty:
                self._caught_up()
                continue
            if self._watched:
                self.observer.fetched(self.progress(), page)
            try:
                moved = self._commit(page)
            except _End as end:
                if self._watched:
                    self.observer.commit_failed(self.progress(), end.status)
                raise
            if self._watched:
                self.observer.committed(self.progress())
            if not moved and _stops_before_unreadable(page):
                self._stuck()
            elif not moved:
                # Only ids at or below the cursor: the source re-served old events. Asking again with
                # the same lastId would get the same page; nothing is new.
                self.stats.warn(f"lastId={self.cursor}: page held no id above the cursor; treated as caught up")
                self._caught_up()

    def _commit(self, page: Page) -> bool:
        """One page, one transaction, fenced. Returns whether the cursor moved."""
        assert self.cursor is not None and self.stats.epoch is not None  # taken over: both read at the fence
        old, epoch, new_cursor = self.cursor, self.stats.epoch, page.next_cursor(self.cursor)
        try:
            result = self.writes.commit_page(
                epoch=epoch, old_cursor=old, new_cursor=new_cursor, events=page.events, quarantined=page.quarantined
            )
        except Fenced as exc:
            raise _End(DrainStatus.FENCED, str(exc)) from None
        except StoreError as exc:
            # The commit may or may not have landed; the next drain reads the cursor from Postgres either way.
            raise _End(DrainStatus.POSTGRES_DOWN, str(exc)) from None
        moved = new_cursor > old
        self.cursor = self.stats.cursor_after = new_cursor
        stats = self.stats
        stats.counts += Counters(
            events_stored=result.inserted,
            events_already_stored=result.already_stored,
            quarantined=result.quarantined,
            pages=1,
        )
        stats.caught_up = False
        if moved:
            stats.stuck = None
        stats.lag_s = lag_s(page)
        if stats.lag_s is not None:
            self._lags.append((time.time(), stats.lag_s))
        return moved

    def _caught_up(self) -> None:
        """Nothing new: end here, or (tailing) note it and poll again at the idle pace."""
        self.stats.caught_up = True
        self.stats.stuck = None
        self.stats.lag_s = 0.0
        if not self.options.tail:
            self._end_polled(DrainStatus.CAUGHT_UP)
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
            self._end_polled(DrainStatus.STUCK, reason)
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
        self.stats.counts += Counters(empty_polls=1)
        if time.monotonic() - self._last_marked >= self.options.mark_polled_every_s:
            self._mark_polled()
        # The gate already spaces polls by min_interval; a source that asks to be polled less often is
        # asked again idle_poll after this poll's response began (as the gate counts: the request reached
        # the source before its response came back, so the pace holds at the source too).
        if self.source.idle_poll_s > self.source.min_interval_s and self._last_answer is not None:
            self._sleep(self._last_answer + self.source.idle_poll_s - time.monotonic())

    def _mark_polled(self) -> None:
        name, epoch = self.source.name, self.stats.epoch
        assert epoch is not None  # polled: the epoch was taken
        try:
            marked = self.writes.mark_polled(epoch)
        except StoreError as exc:
            raise _End(DrainStatus.POSTGRES_DOWN, str(exc)) from None
        if not marked:
            # Taken over while idle (a replay, a skip, another consumer): no commit would tell us, and
            # polling on at the old cursor would never fetch what the new epoch's cursor asks for.
            raise _End(
                DrainStatus.FENCED,
                f"source {name!r}: poll mark refused by the fence (epoch {epoch}): the source was taken over",
            )
        self._last_marked = time.monotonic()

    def _record_failure(self, outcome: Outcome) -> None:
        """One write per failed attempt: the counters, the reason, and the body if it was not a page."""
        try:
            self.writes.record_failure(error=outcome.reason, bad_body=outcome.bad_body, at_cursor=self.cursor)
        except StoreError as exc:
            if outcome.bad_body is not None:  # bytes received must be kept: no request goes on without that
                raise _End(DrainStatus.POSTGRES_DOWN, str(exc)) from None
            self.log.warning("failure not counted in Postgres (%s); counted with the next write", exc)
            return
        if outcome.bad_body is not None:
            self.stats.counts += Counters(quarantined=1)

    def _count_last_requests(self) -> None:
        """The requests no write counted yet (a drain stopped, out of budget or fenced since its last write),
        best effort."""
        if self.stats.epoch is None:
            return
        try:
            self.writes.record_rest()
        except StoreError as exc:
            self.log.warning("last %d requests not counted in Postgres (%s)", self.writes.uncounted, exc)

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake for a stop request or the deadline."""
        until = min(time.monotonic() + seconds, self.deadline)
        while not self.should_stop():
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def _fetch(self) -> Page:
        """The next page, through the gate, by the one retry policy (retry.py)."""
        source, stats = self.source, self.stats
        attempt = 0
        while True:
            assert self.cursor is not None  # taken over: read at the fence
            if self.lease.lost:
                raise _End(
                    DrainStatus.LEASE_LOST, f"source {source.name!r}: lease lost; stopped before the next request"
                )
            try:
                outcome = self.client.fetch(
                    self.cursor,
                    give_up_at=None if math.isinf(self.deadline) else self.deadline + source.timeout_s,
                    should_stop=lambda: self.should_stop() or self.lease.lost,
                    max_unsent=None,
                    epoch=stats.epoch,
                )
            except GateUnavailable as exc:
                raise _End(DrainStatus.REDIS_DOWN, str(exc)) from None
            if outcome is None:
                if self.lease.lost:
                    raise _End(DrainStatus.LEASE_LOST, f"source {source.name!r}: lease lost while waiting for a slot")
                raise _End(DrainStatus.STOPPED if self.should_stop() else DrainStatus.BUDGET_SPENT)
            if outcome.kind is Kind.OK and outcome.page is not None:
                self._last_answer = outcome.timeline.closed if outcome.timeline is not None else None
                return outcome.page
            attempt += 1
            stats.counts += Counters(errors=1)
            stats.last_error = outcome.reason
            self._record_failure(outcome)
            left_s = self.deadline - time.monotonic()
            verdict = after_failure(
                source, outcome, attempt, cursor=self.cursor, budget_left_s=left_s, opts=self.options
            )
            if verdict.transient:
                self.log.warning(
                    "attempt %d/%d at lastId=%s failed: %s", attempt, source.max_attempts, self.cursor, outcome.reason
                )
            stats.retry_after_s += verdict.retry_after_s
            if verdict.give_up is not None:
                raise _End(DrainStatus.SOURCE_ERROR, verdict.give_up)
            self._sleep(verdict.backoff_s)  # none after a Retry-After: the gate holds everyone back until then


def _stops_before_unreadable(page: Page) -> bool:
    """The page stopped before an item it could not read, whose id is unknown (page.py's salvage)."""
    return any(q.event_id is None and STOPS_BEFORE_PHRASE in q.reason for q in page.quarantined)


def drain(
    source: SourceConfig,
    *,
    store: Store,
    redis_client: redis.Redis,
    options: DrainOptions = DrainOptions(),
    should_stop: Callable[[], bool] = lambda: False,
    logger: logging.Logger | logging.LoggerAdapter = log,
) -> DrainStats:
    """Drain one source until caught up (or, tailing, until stopped) or out of time."""
    return Drain(
        source, store=store, redis_client=redis_client, options=options, should_stop=should_stop, logger=logger
    ).run()
