"""A worker: one long-lived process hosting many sources, one :class:`SourceHost` (thread) each.

Why one process for many sources: a Dagster run process costs ~220 MB and seconds of
CPU to start; a source costs a thread, an HTTP connection and a few KB. So a run
hosts up to ``sources_per_run`` sources, each with its own lease, gate, fence and
partition, exactly as if it ran alone.

Handoff timeline (what keeps a source polled across runs):

1. W1 has hosted its sources for ``run_seconds - handoff_s``: it starts *retiring*
   (its heartbeat says so), and keeps draining.
2. Seeing no live, non-retiring worker for them, the sources' sensors ask for W2.
3. W2 starts (5-15 s on a small machine), starts a host per source - each stands
   by on the lease - and lists them in its heartbeat.
4. W1 sees a newer worker listing a source it hosts: it stops that host between
   two requests, which releases the lease; W2's host takes it within one lease
   poll (0.1 s) and polls on at the spacing limit (the gate is shared).
5. W1 exits when it hosts nothing. If W2 never comes, W1 keeps its sources until
   twice its planned life, then lets go (run monitoring ends it after that).

A worker that dies (SIGKILL, OOM, the whole server lost) stops renewing its leases
and its heartbeat: hosts standing by elsewhere (a second deployment) take each
source within one lease TTL; in the same deployment the sensors see the dead
heartbeat and ask for a new worker.

Nothing here knows Dagster: which sources to host is a callable given by the caller
(the Dagster layer asks its instance which sensors are paused and which runs are newer).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from ..config import RunSettings, SourceConfig
from .host import BACKOFF_START_S, SourceHost
from .lease import BLOCK_S as LEASE_BLOCK_S
from .percentile import percentile
from .progress import Counters, DrainObserver
from .store import Store

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "event-ingest:worker:"
SOURCES_PER_CONNECTION = 5
MAX_POOL = 10
_RUNS = RunSettings.model_validate({})  # the `runs:` defaults, declared in config.py


@dataclass(frozen=True)
class WorkerOptions:
    run_seconds: float = _RUNS.run_seconds
    handoff_s: float = _RUNS.handoff_s
    lease_ttl_s: float = _RUNS.lease_ttl_s
    lease_block_s: float = LEASE_BLOCK_S  # a standby looks at a busy lease again at least this often
    backoff_start_s: float = BACKOFF_START_S  # a host's first retry after a failed drain (Redis down...)
    report_every_s: float = _RUNS.report_every_s
    poll_s: float = 1.0  # how often the worker looks at what it should host
    heartbeat_ttl_s: float = 15.0  # a worker silent this long is dead to the sensors
    idle_exit_s: float = _RUNS.idle_exit_s  # a worker with nothing to host (all paused) ends after this long
    overstay: float = 2.0  # with no successor, keep the sources until overstay x run_seconds
    observer: DrainObserver = DrainObserver()  # every drain's (progress.py): the seam for the chaos harness

    @classmethod
    def from_settings(cls, runs: RunSettings, **overrides: Any) -> WorkerOptions:
        settled = cls(
            run_seconds=runs.run_seconds,
            handoff_s=runs.handoff_s,
            lease_ttl_s=runs.lease_ttl_s,
            report_every_s=runs.report_every_s,
            idle_exit_s=runs.idle_exit_s,
        )
        return dataclasses.replace(settled, **overrides)


@dataclass(frozen=True)
class Heartbeat:
    """What a live worker says about itself, in Redis, renewed every poll."""

    worker: str
    started: float  # unix time the worker started
    retiring: bool
    hosting: list[str]  # hosts started (standing by or draining)
    members: list[str]  # every source it would host (its slot), paused ones included
    draining: list[str] = field(default_factory=list)  # hosts holding the lease now (the rest stand by)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Heartbeat:
        return cls(**json.loads(text))

    def newer_than(self, other: Heartbeat) -> bool:
        return (self.started, self.worker) > (other.started, other.worker)


def read_heartbeats(client: redis.Redis, workers: Iterable[str]) -> dict[str, Heartbeat]:
    """The live heartbeats among ``workers`` (ids); a worker without one is dead or not started yet."""
    ids = list(workers)
    if not ids:
        return {}
    found = client.mget([HEARTBEAT_PREFIX + w for w in ids])
    return {w: Heartbeat.from_json(raw) for w, raw in zip(ids, found) if raw is not None}


def slot_members(names: list[str], per_run: int, slot: int) -> list[str]:
    """The sources of one slot: the sources file's order, ``per_run`` at a time."""
    return names[slot * per_run : (slot + 1) * per_run] if slot >= 0 else []


def slot_of(names: list[str], per_run: int, name: str) -> int:
    return names.index(name) // per_run


def sources_to_host(
    members: Iterable[str],
    *,
    paused: set[str],
    configured: set[str] | None,
    me: Heartbeat | None,
    peers: Iterable[Heartbeat],
) -> set[str]:
    """The policy of one worker, in one place: its slot's sources, minus the paused ones, minus any the
    sources file no longer lists (``configured``; None = unknown, keep all), minus those a newer live
    worker of the same deployment already hosts (it stands by on their leases: let go, it takes over)."""
    wanted = {m for m in members if m not in paused and (configured is None or m in configured)}
    if me is not None:
        for peer in peers:
            if peer.worker != me.worker and peer.newer_than(me):
                wanted -= set(peer.hosting)
    return wanted


@dataclass
class SourceReport:
    """One source over one report window: what reaches Dagster, at a bounded rate."""

    source: str
    window_s: float
    state: str
    counts: Counters  # over the window
    epoch: int | None
    cursor: int | None
    caught_up: bool
    lag_p50_s: float | None = None
    lag_p99_s: float | None = None
    lag_max_s: float | None = None
    last_error: str | None = None


class Worker:
    def __init__(
        self,
        worker_id: str,
        sources: list[SourceConfig],
        *,
        database_url: str,
        redis_client: redis.Redis,
        options: WorkerOptions = WorkerOptions(),
        report: Callable[[list[SourceReport]], None] = lambda reports: None,
        logger: logging.Logger | logging.LoggerAdapter = log,
    ) -> None:
        self.id = worker_id
        self.sources = {s.name: s for s in sources}
        self.options = options
        self._database_url = database_url
        self._redis = redis_client
        self._report = report
        self._log = logger
        # One small pool for all hosts: a page's commit holds a connection for milliseconds, so a few
        # connections serve many sources (one each would be 1,000 connections for 1,000 sources).
        self._store = Store(
            database_url,
            application_name="event-ingest-worker",
            pool_size=min(MAX_POOL, max(2, math.ceil(len(sources) / SOURCES_PER_CONNECTION))),
        )
        self.hosts: dict[str, SourceHost] = {}
        self._stopping: dict[str, SourceHost] = {}
        self._last_totals: dict[str, Counters] = {}
        self._last_report = time.monotonic()
        self.started = time.time()
        self.retiring = False
        self.end_reason = ""

    @property
    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            self.id,
            self.started,
            self.retiring,
            sorted(self.hosts),
            sorted(self.sources),
            sorted(n for n, h in self.hosts.items() if h.state == "draining"),
        )

    def run(self, wanted: Callable[[Worker], set[str]], should_stop: Callable[[], bool] = lambda: False) -> str:
        """Host what ``wanted(self)`` names, re-asked every poll, until retired and handed over, stopped,
        idle, or out of time. Returns why it ended."""
        opts = self.options
        started = time.monotonic()
        retire_at = started + opts.run_seconds - opts.handoff_s
        end_at = started + opts.run_seconds * opts.overstay
        next_report = started + opts.report_every_s
        idle_since: float | None = None
        try:
            while True:
                now = time.monotonic()
                if should_stop():
                    self.end_reason = "stopped"
                    break
                if now >= end_at:
                    self.end_reason = "no successor took over; letting go at twice the planned life"
                    break
                self.retiring = now >= retire_at
                try:
                    want = wanted(self)
                except Exception as exc:  # keep hosting what we host; say why the plan could not be read
                    self._log.warning(
                        "worker %s: could not work out what to host (%s); keeping %d sources",
                        self.id,
                        exc,
                        len(self.hosts),
                    )
                    want = set(self.hosts)
                self._reconcile(want)
                self._beat()
                if now >= next_report:
                    self._emit_reports()
                    next_report = now + opts.report_every_s
                if self.hosts:
                    idle_since = None
                elif self.retiring:
                    self.end_reason = "handed over to a successor"
                    break
                else:
                    idle_since = idle_since if idle_since is not None else now
                    if now - idle_since >= opts.idle_exit_s:
                        self.end_reason = "nothing to host (every source paused or taken)"
                        break
                self._nap(opts.poll_s, should_stop)
        finally:
            self._shutdown()
        return self.end_reason

    # -- internals ------------------------------------------------------------------------------

    def _reconcile(self, want: set[str]) -> None:
        for name, host in list(self._stopping.items()):
            if not host.alive:
                del self._stopping[name]
        for name in sorted(set(self.hosts) - want):
            host = self.hosts.pop(name)
            host.stop()  # the lease is released when its drain ends, between two requests
            self._stopping[name] = host
            self._log.info("worker %s: letting go of source %s", self.id, name)
        for name, host in list(self.hosts.items()):
            if not host.alive:  # its thread ended by itself (a bug): start it again, next poll
                self._log.warning("worker %s: host of source %s ended unexpectedly", self.id, name)
                del self.hosts[name]
        for name in sorted(want - set(self.hosts)):
            if name not in self.sources or name in self._stopping:
                continue  # unknown here, or still letting go: next poll
            source = self.sources[name]
            self.hosts[name] = SourceHost(
                source,
                store=self._store,
                redis_client=self._redis,
                lease_ttl_s=self.options.lease_ttl_s,
                lease_block_s=self.options.lease_block_s,
                backoff_start_s=self.options.backoff_start_s,
                logger=self._log,
                observer=self.options.observer,
            ).start()
            self._last_totals.setdefault(name, Counters())

    def _beat(self) -> None:
        try:
            self._redis.set(
                HEARTBEAT_PREFIX + self.id, self.heartbeat.to_json(), px=int(self.options.heartbeat_ttl_s * 1000)
            )
        except redis.RedisError as exc:
            self._log.warning("worker %s: heartbeat not written (%s)", self.id, exc)

    def _emit_reports(self) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        window = now_mono - self._last_report
        since_wall = now_wall - window
        self._last_report = now_mono
        reports = []
        for host in list(self.hosts.values()) + list(self._stopping.values()):
            reports.append(self._report_for(host, window, since_wall))
        try:
            self._report(reports)
        except Exception:
            self._log.exception("worker %s: progress report failed", self.id)

    def _report_for(self, host: SourceHost, window: float, since_wall: float) -> SourceReport:
        total = host.totals()
        last = self._last_totals.get(host.name, Counters())
        self._last_totals[host.name] = total
        now = host.progress(lags_since=since_wall)
        lags = list(now.lags_s) if now is not None else []
        return SourceReport(
            source=host.name,
            window_s=round(window, 1),
            state=host.state,
            counts=total - last,
            epoch=now.epoch if now is not None else None,
            cursor=now.cursor if now is not None else None,
            caught_up=bool(now and now.caught_up),
            lag_p50_s=round(statistics.median(lags), 3) if lags else None,
            lag_p99_s=round(percentile(lags, 0.99), 3) if lags else None,
            lag_max_s=round(max(lags), 3) if lags else None,
            last_error=host.last_error,
        )

    def _nap(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until and not should_stop():
            time.sleep(min(0.1, max(until - time.monotonic(), 0)))

    def _shutdown(self) -> None:
        for name, host in self.hosts.items():
            host.stop()
            self._stopping[name] = host
        self.hosts = {}
        # A drain lets go between two requests: at most one request timeout plus a commit.
        deadline = time.monotonic() + max((s.timeout_s for s in self.sources.values()), default=10.0) + 10
        for host in self._stopping.values():
            host.join(max(0.0, deadline - time.monotonic()))
        self._emit_reports()
        self._stopping = {}
        try:
            self._redis.delete(HEARTBEAT_PREFIX + self.id)
        except redis.RedisError:
            pass  # it expires by itself
        self._store.close()
