"""A source host: keeps one source ingesting, in a thread of its own, for as long as it is wanted.

It stands by on the source's lease, tails the source while it holds it, and
starts over when the drain ends for a reason that is not its own stop:

* taken over (fenced, lease lost): straight back to standby - another holder
  is draining, and this host takes over again the moment that one lets go;
* the source, Redis or Postgres failing: back off (1 s doubling to 30 s), then
  try again; the failure is counted and reported, never silently retried
  forever without a trace.

Stopping a host (its run hands the source to a successor, or the operator
paused the source) ends the drain between two requests: the lease is released
at once, so a successor standing by takes it within one lease poll.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import redis

from ..config import SourceConfig
from .drain import Drain
from .lease import BLOCK_S as LEASE_BLOCK_S
from .progress import Counters, DrainObserver, DrainOptions, DrainStats, DrainStatus, Progress
from .store import Store

log = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0

# Statuses after which the host stands by again at once: someone else holds the source now.
_TAKEN_OVER = {DrainStatus.FENCED, DrainStatus.LEASE_LOST, DrainStatus.LEASE_BUSY}


class SourceHost:
    def __init__(
        self,
        source: SourceConfig,
        *,
        store: Store,
        redis_client: redis.Redis,
        lease_ttl_s: float,
        lease_block_s: float = LEASE_BLOCK_S,
        backoff_start_s: float = BACKOFF_START_S,
        logger: logging.Logger | logging.LoggerAdapter = log,
        on_drain_end: Callable[[DrainStats], None] | None = None,
        observer: DrainObserver = DrainObserver(),
    ) -> None:
        self.source = source
        self.name = source.name
        self._store = store  # shared with the worker's other hosts (a small pool); the worker closes it
        self._redis = redis_client
        self._options = DrainOptions(
            lease_ttl_s=lease_ttl_s,
            lease_block_s=lease_block_s,
            lease_wait_s=math.inf,
            max_seconds=math.inf,
            tail=True,
            observer=observer,
        )
        self._backoff_start_s = backoff_start_s  # the first retry after a failed drain; doubles up to the max
        self._log = logger
        self._on_drain_end = on_drain_end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"host-{source.name}", daemon=True)
        self._finished = Counters()  # sums over drains that ended
        self._totals_lock = threading.Lock()  # a drain moves from "current" to "finished" in one step
        self._drain: Drain | None = None
        self._between = "starting"  # what the host does when no drain runs: starting | backoff | stopped
        self.last_error: str | None = None

    # -- control ------------------------------------------------------------------------------

    def start(self) -> SourceHost:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the host to let go: its drain ends between two requests and releases the lease."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- what it did ----------------------------------------------------------------------------

    def totals(self) -> Counters:
        """Everything this host did since it started: finished drains plus the one running now."""
        with self._totals_lock:
            done, current = self._finished, self._drain
            return done + current.counts() if current is not None else done

    def progress(self, lags_since: float | None = None) -> Progress | None:
        """The drain running now (standing by or draining), if any: see ``Drain.progress()``."""
        current = self._drain
        return current.progress(lags_since) if current is not None else None

    @property
    def state(self) -> str:
        """standby (waiting on the lease), draining (the epoch is ours), backoff, starting or stopped."""
        now = self.progress()
        return now.state if now is not None else self._between

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self._backoff_start_s
        try:
            while not self._stop.is_set():
                stats = self._one_drain(self._store)
                if stats.status is DrainStatus.STOPPED and self._stop.is_set():
                    break
                if stats.status in _TAKEN_OVER:
                    backoff = self._backoff_start_s
                    continue
                if stats.events_stored or stats.empty_polls:
                    backoff = self._backoff_start_s  # it worked for a while: the next failure starts small again
                self._log.warning("source %s: drain ended %s; retrying in %.1f s", self.name, stats.status, backoff)
                self._between = "backoff"
                self._wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            self._between = "stopped"

    def _one_drain(self, store: Store) -> DrainStats:
        drain = Drain(
            self.source,
            store=store,
            redis_client=self._redis,
            options=self._options,
            should_stop=self._stop.is_set,
            logger=self._log,
        )
        self._drain = drain
        try:
            stats = drain.run()
        except Exception as exc:  # a bug must not kill the host silently: report it and back off
            self._log.exception("source %s: drain crashed", self.name)
            drain.stats.status, drain.stats.error = DrainStatus.SOURCE_ERROR, f"drain crashed: {exc!r}"
            stats = drain.stats
        self._record(stats)
        return stats

    def _record(self, stats: DrainStats) -> None:
        with self._totals_lock:
            assert stats.status is not None  # run() always says how it ended
            self._finished += stats.counts + Counters.ended(stats.status)
            self._drain = None
        if not stats.ok:
            self.last_error = stats.error or str(stats.status)
        if self._on_drain_end is not None:
            self._on_drain_end(stats)

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)
