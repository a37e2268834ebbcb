"""A chaos consumer: one deployment in one process, running the production worker over every source.

It is what an ingest run is: a :class:`~event_ingest.core.worker.Worker` hosting one
:class:`~event_ingest.core.host.SourceHost` per source, each standing by on the source's lease
and tailing the source while it holds it. Every consumer hosts every source, so for each source
one consumer drains and the others stand by, as several deployments sharing one Redis and one
Postgres do. Only the lease TTL and the source timeouts are short, so every fault resolves within
seconds.

Checkpoints, for faults that must land between two steps (not by luck): this process gives every
drain an observer (``WorkerOptions(observer=...)``, the core's one seam for it:
:class:`~event_ingest.core.progress.DrainObserver`) that announces every phase as a JSON line on
stdout - ``fetched`` (a page in hand, not committed), ``committed``, ``commit_end`` (a commit that
did not land: fenced, Postgres down) and ``done`` (a drain ended, with its status). At
``fetched`` and ``committed`` a drain tries to claim an *arm* file the harness left in the control
directory (``arm-<phase>@<source>`` first, then ``arm-<phase>``). The claim is an atomic rename,
so exactly one drain gets it; that drain announces ``armed`` and holds still until the harness
removes the claim (``held-<consumer>-<source>``). Its lease keeps being renewed meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..core.page import Page
from ..core.progress import DrainObserver, DrainStats, DrainStatus, Progress
from .plan import HOLD_MAX_S, LEASE_TTL_S


def held_path(control_dir: Path, consumer: str, source: str) -> Path:
    return control_dir / f"held-{consumer}-{source}"


class Checkpoints(DrainObserver):
    """The checkpoints of one consumer process: the observer of every drain it runs (core/progress.py)."""

    def __init__(self, control_dir: Path, name: str) -> None:
        self.control_dir = control_dir
        self.name = name
        self._out = threading.Lock()

    def announce(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"ev": ev, **fields}, default=str) + "\n"
        with self._out:
            sys.stdout.write(line)
            sys.stdout.flush()

    def reach(self, phase: str, progress: Progress, **fields: Any) -> None:
        """Announce ``phase``; if the harness armed it (for this source or any), claim it and hold still."""
        source = progress.source
        fields = {"src": source, "epoch": progress.epoch, "cursor": progress.cursor, **fields}
        self.announce(phase, **fields)
        held = held_path(self.control_dir, self.name, source)
        for arm in (f"arm-{phase}@{source}", f"arm-{phase}"):
            try:
                os.rename(self.control_dir / arm, held)  # atomic: one claimant only
                break
            except FileNotFoundError:
                continue
        else:
            return
        self.announce("armed", phase=phase, consumer=progress.consumer, **fields)
        deadline = time.monotonic() + HOLD_MAX_S
        while held.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.announce("released", phase=phase, src=source)

    # -- the drain's observer ---------------------------------------------------------------------

    def fetched(self, progress: Progress, page: Page) -> None:
        self.reach("fetched", progress, n=len(page.events), q=len(page.quarantined))

    def committed(self, progress: Progress) -> None:
        self.reach("committed", progress)

    def commit_failed(self, progress: Progress, status: DrainStatus) -> None:
        self.announce("commit_end", src=progress.source, epoch=progress.epoch, outcome=str(status))

    def ended(self, stats: DrainStats) -> None:
        self.announce(
            "done",
            src=stats.source,
            status=str(stats.status),
            epoch=stats.epoch,
            stored=stats.events_stored,
            pages=stats.pages,
            error=stats.error,
        )


def run_consumer(config_path: Path, name: str) -> int:
    """``python -m event_ingest.chaos consumer CONFIG NAME``: host every source until told to stop."""
    from ..config import SourceConfig
    from ..core import StoreError, connect_redis
    from ..core.worker import Worker, WorkerOptions

    config = json.loads(config_path.read_text())
    # Every request's gate slot, send and close (core/client.py's trace), for the verdict to explain a gap with.
    tracing = logging.FileHandler(Path(config["trace_dir"]) / f"trace-{name}.jsonl")
    tracing.setFormatter(logging.Formatter("%(message)s"))
    trace = logging.getLogger("event_ingest.trace")
    trace.addHandler(tracing)
    trace.setLevel(logging.DEBUG)
    trace.propagate = False
    checkpoints = Checkpoints(Path(config["control_dir"]), name)
    sources = [SourceConfig(**s) for s in config["sources"]]
    names = {s.name for s in sources}

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != parent  # the harness is gone: so are we

    redis_client = connect_redis(config["redis_url"], timeout_s=1.0, check=False)
    # One long life (no retiring, no handoff): faults end drains, not a run's budget. Standbys look at a
    # busy lease every 50 ms, as eager as a poller: a lease lost with part of Redis' memory (a failover, an
    # old snapshot, an eviction) is taken at once, the worst case for the gate. A production standby blocks
    # on the freed list for up to two seconds and would come later, after the held response (the loss
    # trials would then not test the gate at all). For the same reason a drain ended by Redis going away
    # (a failover, a restart) is retried after 0.1 s, not a second.
    options = WorkerOptions(
        run_seconds=1e9,
        handoff_s=0.0,
        lease_ttl_s=LEASE_TTL_S,
        lease_block_s=0.05,
        backoff_start_s=0.1,
        report_every_s=1e9,
        poll_s=0.5,
        idle_exit_s=1e9,
        observer=checkpoints,
    )
    checkpoints.announce("started", pid=os.getpid())
    while not should_stop():
        try:
            worker = Worker(
                f"chaos-{name}",
                sources,
                database_url=config["database_url"],
                redis_client=redis_client,
                options=options,
            )
        except StoreError as exc:  # Postgres is down right now (a restart): try again shortly
            checkpoints.announce("store_down", error=str(exc))
            stop.wait(0.3)
            continue
        reason = worker.run(lambda _worker: names, should_stop)
        checkpoints.announce("worker_end", reason=reason)
    return 0
