"""Store: the events table, the cursor, the fence and the quarantine, in Postgres.

One ``Store`` object, made of parts; each part's statements live beside the queries they run, one module per
concern:

- ``connections``: ``Connections``, the small pool and the one owner of the store's connections (one
  transaction per operation), ``StoreError``/``Fenced``/``StateConflict``;
- ``schema``: ``Schema``, tables, counting triggers and upgrades between versions, partitions per source;
- ``commit``: ``Commits``, the epoch bump and the fenced page commit (its failure timeline), poll marks,
  request counters;
- ``reads``: ``Reads``, status and the counters the checks and the rollup answer from, gaps, stuck sources,
  and ``snapshot()``: reads that are compared with each other, in one transaction (``records``: what they
  return);
- ``audit``: ``Audit``, the counter audit (counters verified against the rows, a bounded part per call) and
  the recount;
- ``operations``: ``Operations``, what operators do through the fence - replay's rewind, quarantine requeue
  and discard.

Every part is given the one ``Connections`` and holds nothing else. This package exports the Store, what it
raises and what it returns; a statement or a constant is imported from the module that defines it.
"""

from __future__ import annotations

from typing import Any, Self

import psycopg

from .audit import Audit, CounterAudit, Recount
from .commit import CommitResult, Commits
from .connections import Connections, Fenced, StateConflict, StoreError
from .operations import Operations, QuarantineItem
from .reads import Reads
from .records import BlockDrift, CounterDrift, Gap, IdSpan, SourceActivity, SourceStatus, Stuck
from .schema import Schema


class Store:
    """The statements the ingest needs, over a small pool of Postgres connections.

    Every operation borrows one connection, runs one transaction and gives it back, so one Store
    can serve many threads (``pool_size`` connections at most; a thread waits when all are busy).
    A connection that broke is dropped and replaced by the next operation that needs one.
    ``conn`` is the first connection, for tests and tools that run their own SQL from one thread.

    The parts are public (``store.reads``, ``store.commits``, ...); each operation is also the Store's own
    (``store.commit_page`` is ``store.commits.commit_page``), documented where the part defines it.
    """

    def __init__(
        self,
        url: str,
        *,
        application_name: str = "event-ingest",
        connect_timeout_s: int = 5,
        pool_size: int = 1,
        read_only: bool = False,
        pooler: str | None = None,
    ) -> None:
        """``pooler``: what sits before Postgres (config.POOLER_MODES); None: as $EVENT_INGEST_DATABASE_POOLER
        says."""
        self.connections = Connections(
            url,
            application_name=application_name,
            connect_timeout_s=connect_timeout_s,
            pool_size=pool_size,
            read_only=read_only,
            pooler=pooler,
        )
        self.schema = Schema(self.connections)
        self.commits = Commits(self.connections)
        self.reads = Reads(self.connections)
        self.audit = Audit(self.connections)
        self.operations = Operations(self.connections)

        # schema
        self.apply_schema = self.schema.apply_schema
        self.ensure_source = self.schema.ensure_source
        self.forget_source = self.schema.forget_source
        self.schema_found = self.schema.schema_found
        # the drain's writes
        self.begin_epoch = self.commits.begin_epoch
        self.commit_page = self.commits.commit_page
        self.mark_polled = self.commits.mark_polled
        self.record_failure = self.commits.record_failure
        self.record_requests = self.commits.record_requests
        self.quarantine = self.commits.quarantine
        # reads
        self.snapshot = self.reads.snapshot
        self.status = self.reads.status
        self.source_status = self.reads.source_status
        self.poll_age_s = self.reads.poll_age_s
        self.poll_ages = self.reads.poll_ages
        self.row_counts = self.reads.row_counts
        self.quarantine_summary = self.reads.quarantine_summary
        self.id_span = self.reads.id_span
        self.accounted_blocks = self.reads.accounted_blocks
        self.gaps_between = self.reads.gaps_between
        self.gaps = self.reads.gaps
        self.recent_ingest_times = self.reads.recent_ingest_times
        self.recent_minutes = self.reads.recent_minutes
        self.save_rollup = self.reads.save_rollup
        self.event_ids = self.reads.event_ids
        self.source_activity = self.reads.source_activity
        self.stuck = self.reads.stuck
        self.counter_drift = self.reads.counter_drift
        # the counter audit
        self.verify_counters = self.audit.verify_counters
        self.recount = self.audit.recount
        # what operators do
        self.rewind = self.operations.rewind
        self.quarantine_items = self.operations.quarantine_items
        self.quarantine_item = self.operations.quarantine_item
        self.requeue = self.operations.requeue
        self.discard = self.operations.discard

    @property
    def url(self) -> str:
        return self.connections.url

    @property
    def pooler(self) -> str:
        return self.connections.pooler

    @property
    def conn(self) -> psycopg.Connection[Any]:
        return self.connections.conn

    def close(self) -> None:
        self.connections.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "Store",
    # what it raises
    "StoreError",
    "Fenced",
    "StateConflict",
    # what it returns
    "CommitResult",
    "SourceStatus",
    "SourceActivity",
    "Gap",
    "IdSpan",
    "Stuck",
    "BlockDrift",
    "CounterDrift",
    "CounterAudit",
    "Recount",
    "QuarantineItem",
    "Reads",  # what snapshot() yields
]
