"""The drain: one consumer's turn at one source.

lease -> epoch bump (fence) -> loop { gate -> fetch -> commit } -> release.

It runs until the source is caught up (an empty page) or the time budget is
spent, so one Dagster run (which costs seconds to launch) moves many pages.
The same function backs the Dagster asset and ``event-ingest ingest``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

import redis

from ..config import SourceConfig
from .client import Kind, Outcome, SourceClient
from .gate import Gate, GateUnavailable
from .lease import Lease, LeaseUnavailable
from .page import Page
from .store import Fenced, Store, StoreError

log = logging.getLogger(__name__)

# Drain end states.
CAUGHT_UP = "caught_up"  # an empty page: nothing new right now
BUDGET_SPENT = "budget_spent"  # time budget used up; more may be waiting
LEASE_BUSY = "lease_busy"  # another consumer is draining this source
FENCED = "fenced"  # another consumer took over mid-drain; our last page was rolled back
LEASE_LOST = "lease_lost"  # our lease expired/was taken; stopped before the next request
SOURCE_ERROR = "source_error"  # the source kept failing (retries spent) or answered unusably
REDIS_DOWN = "redis_unavailable"  # no gate, no lease: stop requesting rather than guess
POSTGRES_DOWN = "postgres_unavailable"
STOPPED = "stopped"  # asked to stop (signal)

OK_STATUSES = {CAUGHT_UP, BUDGET_SPENT, LEASE_BUSY}


@dataclass
class DrainStats:
    source: str
    status: str = ""
    error: str | None = None
    consumer: str = ""
    epoch: int | None = None
    cursor_before: int | None = None
    cursor_after: int | None = None
    events_stored: int = 0
    events_already_stored: int = 0
    quarantined: int = 0
    pages: int = 0
    requests: int = 0
    errors: int = 0
    retry_after_s: float = 0.0
    min_gap_ms: float | None = None
    median_gap_ms: float | None = None
    lease_wait_s: float = 0.0
    duration_s: float = 0.0
    lag_s: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    def to_dict(self) -> dict:
        return asdict(self)

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
    lease_ttl_s: float = 30.0
    lease_wait_s: float = 5.0
    max_seconds: float | None = None  # default: the source's max_run_seconds
    backoff_base_s: float = 0.25
    backoff_max_s: float = 10.0


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
    """Drain one source until caught up or out of time. Never raises for source/store/Redis trouble:
    the returned stats say how it ended (``status``) and why (``error``)."""
    stats = DrainStats(source=source.name, consumer=consumer_id())
    _drain(source, stats, store, redis_client, options, hooks, should_stop, logger)
    if stats.ok:
        logger.info(stats.summary())
    else:
        logger.warning(stats.summary())
    return stats


def _drain(source, stats, store, redis_client, options, hooks, should_stop, logger) -> DrainStats:
    started = time.monotonic()
    budget = options.max_seconds if options.max_seconds is not None else source.max_run_seconds
    deadline = started + budget
    lease = Lease(redis_client, source.name, ttl_s=options.lease_ttl_s, wait_s=options.lease_wait_s)
    # The reservation outlives the longest request: timeout plus one interval.
    gate = Gate(
        redis_client, source.name, interval_s=source.min_interval_s,
        hold_s=source.timeout_s + source.min_interval_s, token=stats.consumer,
    )
    client = SourceClient(source, gate)
    acquired = False
    try:
        try:
            acquired = lease.acquire()
        except LeaseUnavailable as exc:
            return _end(stats, REDIS_DOWN, str(exc), logger)
        stats.lease_wait_s = time.monotonic() - started
        if not acquired:
            return _end(stats, LEASE_BUSY, None, logger)
        try:
            store.ensure_source(source.name)
            stats.epoch, cursor = store.begin_epoch(source.name)
        except StoreError as exc:
            return _end(stats, POSTGRES_DOWN, str(exc), logger)
        stats.cursor_before = stats.cursor_after = cursor
        return _loop(source, stats, store, lease, gate, client, cursor, deadline, options, hooks, should_stop, logger)
    finally:
        if acquired:
            lease.release()
        client.close()
        stats.requests = len(client.request_starts)
        gaps = _gaps_ms(client.request_starts)
        if gaps:
            stats.min_gap_ms = round(min(gaps), 3)
            stats.median_gap_ms = round(statistics.median(gaps), 3)
        stats.duration_s = round(time.monotonic() - started, 3)


def _loop(source, stats, store, lease, gate, client, cursor, deadline, options, hooks, should_stop, logger):
    while True:
        if should_stop():
            return _end(stats, STOPPED, None, logger)
        if time.monotonic() >= deadline:
            return _end(stats, BUDGET_SPENT, None, logger)
        try:
            outcome = _fetch_with_retries(source, stats, store, lease, gate, client, cursor, deadline, options,
                                          should_stop, logger)
        except GateUnavailable as exc:
            return _end(stats, REDIS_DOWN, str(exc), logger)
        except StoreError as exc:
            return _end(stats, POSTGRES_DOWN, str(exc), logger)
        if isinstance(outcome, str):  # an end state decided while retrying
            return _end(stats, outcome, stats.error, logger)
        page = outcome.page
        for warning in page.warnings:
            logger.warning("source %s: page at lastId=%s: %s", source.name, cursor, warning)
            stats.warnings.append(f"lastId={cursor}: {warning}")
        if page.empty:
            stats.lag_s = 0.0
            return _end(stats, CAUGHT_UP, None, logger)
        if hooks.after_fetch:
            hooks.after_fetch(stats, page)
        new_cursor = page.next_cursor(cursor)
        try:
            result = store.commit_page(
                source.name, epoch=stats.epoch, old_cursor=cursor, new_cursor=new_cursor,
                events=page.events, quarantined=page.quarantined,
            )
        except Fenced as exc:
            return _end(stats, FENCED, str(exc), logger)
        except StoreError as exc:
            # The commit may or may not have landed; the next drain reads the cursor from Postgres either way.
            return _end(stats, POSTGRES_DOWN, str(exc), logger)
        moved = new_cursor > cursor
        cursor = new_cursor
        stats.cursor_after = cursor
        stats.pages += 1
        stats.events_stored += result.inserted
        stats.events_already_stored += result.already_stored
        stats.quarantined += result.quarantined
        stats.lag_s = _lag_s(page)
        if hooks.after_commit:
            hooks.after_commit(stats)
        if not moved:
            # Only ids at or below the cursor: the source re-served old events. Asking again with
            # the same lastId would get the same page until the budget runs out; nothing is new.
            stats.warnings.append(f"lastId={cursor}: page held no id above the cursor; treated as caught up")
            return _end(stats, CAUGHT_UP, None, logger)


def _fetch_with_retries(source, stats, store, lease, gate, client, cursor, deadline, options, should_stop, logger):
    """The one retry policy: transient failures back off exponentially (with jitter) and retry through
    the gate; a Retry-After is honoured (the gate already moved every consumer's next slot)."""
    for attempt in range(1, source.max_attempts + 1):
        if lease.lost:
            stats.error = f"source {source.name!r}: lease lost; stopped before the next request"
            return LEASE_LOST
        grant = gate.acquire(max_wait_s=max(deadline - time.monotonic(), 0.0) + source.timeout_s,
                             should_stop=lambda: should_stop() or lease.lost)
        if grant is None:
            if lease.lost:
                stats.error = f"source {source.name!r}: lease lost while waiting for a slot"
                return LEASE_LOST
            return STOPPED if should_stop() else BUDGET_SPENT
        outcome: Outcome = client.attempt(grant, cursor)
        if outcome.kind is Kind.OK:
            return outcome
        if not outcome.sent:
            # Nothing reached the source: no error to count, no backoff; just ask the gate again.
            logger.warning("source %s: %s", source.name, outcome.reason)
            continue
        stats.errors += 1
        if outcome.bad_body is not None:
            store.quarantine(source.name, [outcome.bad_body])
            stats.quarantined += 1
        if outcome.kind is Kind.FATAL:
            stats.error = f"source {source.name!r} at lastId={cursor}: {outcome.reason}"
            return SOURCE_ERROR
        logger.warning("source %s: attempt %d/%d at lastId=%s failed: %s",
                       source.name, attempt, source.max_attempts, cursor, outcome.reason)
        if outcome.retry_after_s is not None:
            stats.retry_after_s += outcome.retry_after_s
            if time.monotonic() + outcome.retry_after_s > deadline:
                stats.error = f"source {source.name!r} asked to wait {outcome.retry_after_s:g}s (Retry-After)"
                return SOURCE_ERROR
            continue  # the gate holds everyone back until then
        if attempt < source.max_attempts:
            delay = min(options.backoff_max_s, options.backoff_base_s * 2 ** (attempt - 1))
            time.sleep(delay * random.uniform(0.5, 1.0))
    stats.error = f"source {source.name!r} at lastId={cursor}: {source.max_attempts} attempts failed, last: {outcome.reason}"
    return SOURCE_ERROR


def _end(stats: DrainStats, status: str, error: str | None, logger) -> DrainStats:
    stats.status = status
    stats.error = error
    return stats
