"""Store: the events table, the cursor, the fence and the quarantine, in Postgres.

One ``Store`` object; its statements live beside the queries they run, one module per concern:

- ``connections``: the small pool, one transaction per operation, ``StoreError``/``Fenced``/``StateConflict``;
- ``schema``: tables, counting triggers and upgrades between versions, partitions per source;
- ``commit``: the epoch bump and the fenced page commit (its failure timeline), poll marks, request counters;
- ``reads``: status and the counters the checks and the rollup answer from, gaps, stuck sources, and
  ``snapshot()``: reads that are compared with each other, in one transaction;
- ``audit``: the counter audit (counters verified against the rows, a bounded part per call) and the recount;
- ``operations``: what operators do through the fence - replay's rewind, quarantine requeue and discard.

Every name the single ``store`` module used to hold is importable from here as before.
"""

from __future__ import annotations

from .audit import (
    BLOCK_COUNTS_SQL,
    CLEAR_DRIFT_SQL,
    COUNTER_BLOCKS_PER_CALL,
    ENSURE_AUDIT_SQL,
    LOCK_AUDIT_SQL,
    LOCK_PARTITION_SQL,
    SAVE_AUDIT_SQL,
    VERIFY_BLOCKS_SQL,
    Audit,
    CounterAudit,
    Recount,
    drift_summary,
)
from .commit import (
    ADVANCE_CURSOR_SQL,
    BEGIN_EPOCH_SQL,
    COPY_EVENTS_SQL,
    COUNT_FENCED_SQL,
    HIGHEST_STORED_ID_SQL,
    HOLD_FENCE_SQL,
    INSERT_EVENTS_SQL,
    INSERT_QUARANTINE_SQL,
    LAST_ERROR_CHARS,
    MARK_POLLED_SQL,
    RECORD_FAILURE_SQL,
    RECORD_REQUESTS_SQL,
    CommitResult,
    Commits,
    quarantine_params,
    request_counts,
)
from .connections import Connections, Fenced, StateConflict, StoreError
from .operations import (
    DELETE_EVENTS_FROM_SQL,
    LOCK_QUARANTINE_ITEM_SQL,
    LOCK_STATE_SQL,
    QUARANTINE_COLUMNS,
    QUARANTINE_COUNT_SQL,
    QUARANTINE_ITEM_SQL,
    QUARANTINE_LIST_SQL,
    RESOLVE_QUARANTINE_SQL,
    REWIND_SQL,
    STORED_IDS_SQL,
    Operations,
    QuarantineItem,
)
from .reads import (
    ACCOUNTED_BLOCKS_SQL,
    COUNTER_DRIFT_SQL,
    GAPS_SQL,
    ID_SPAN_SQL,
    MALFORMED_BODY_REASON,
    QUARANTINE_SUMMARY_SQL,
    RECENT_INGEST_TIMES_SQL,
    RECENT_MINUTES_SQL,
    ROW_COUNTS_SQL,
    SNAPSHOT_SQL,
    SOURCE_ACTIVITY_SQL,
    STATUS_SQL,
    STOPS_BEFORE_PHRASE,
    STOPS_BEFORE_REASON,
    STUCK_AFTER_S,
    STUCK_SIGHTINGS,
    STUCK_SQL,
    UPSERT_ROLLUP_SQL,
    BlockDrift,
    CounterDrift,
    Gap,
    IdSpan,
    Reads,
    Snapshot,
    SourceActivity,
    SourceStatus,
    Stuck,
)
from .schema import (
    ADD_COUNTER_AUDIT_SQL,
    ADD_LAST_POLL_AT_SQL,
    ADD_OPERATIONS_COLUMNS_SQL,
    COUNTERS_SQL,
    COUNTING_TRIGGERS,
    ENSURE_STATE_SQL,
    FORGET_SOURCE_SQL,
    ID_BLOCK_BITS,
    ID_BLOCK_SIZE,
    LOCK_EVENTS_SQL,
    PARTITION_STATE_SQL,
    READ_SCHEMA_VERSION_SQL,
    RECOUNT_SQL,
    SCHEMA_LOCK_KEY,
    SCHEMA_SQL,
    SCHEMA_VERSION,
    SOURCES_SQL,
    TABLES_FOUND_SQL,
    WRITE_SCHEMA_VERSION_SQL,
    Schema,
    partition_name,
)


class Store(Connections, Schema, Commits, Reads, Audit, Operations):
    """The statements the ingest needs, over a small pool of Postgres connections.

    Every operation borrows one connection, runs one transaction and gives it back, so one Store
    can serve many threads (``pool_size`` connections at most; a thread waits when all are busy).
    A connection that broke is dropped and replaced by the next operation that needs one.
    ``conn`` is the first connection, for tests and tools that run their own SQL from one thread.
    """


__all__ = [
    # the store and what it raises and returns
    "Store",
    "StoreError",
    "Fenced",
    "StateConflict",
    "CommitResult",
    "SourceStatus",
    "SourceActivity",
    "Gap",
    "IdSpan",
    "QuarantineItem",
    "Stuck",
    "Snapshot",
    "BlockDrift",
    "CounterDrift",
    "CounterAudit",
    "Recount",
    "drift_summary",
    "partition_name",
    "quarantine_params",
    "request_counts",
    # its parts
    "Connections",
    "Schema",
    "Commits",
    "Reads",
    "Audit",
    "Operations",
    # schema
    "SCHEMA_LOCK_KEY",
    "SCHEMA_VERSION",
    "ID_BLOCK_BITS",
    "ID_BLOCK_SIZE",
    "SCHEMA_SQL",
    "READ_SCHEMA_VERSION_SQL",
    "WRITE_SCHEMA_VERSION_SQL",
    "COUNTERS_SQL",
    "COUNTING_TRIGGERS",
    "ADD_LAST_POLL_AT_SQL",
    "ADD_OPERATIONS_COLUMNS_SQL",
    "ADD_COUNTER_AUDIT_SQL",
    "LOCK_EVENTS_SQL",
    "PARTITION_STATE_SQL",
    "RECOUNT_SQL",
    "SOURCES_SQL",
    "ENSURE_STATE_SQL",
    "TABLES_FOUND_SQL",
    "FORGET_SOURCE_SQL",
    # commit path
    "BEGIN_EPOCH_SQL",
    "ADVANCE_CURSOR_SQL",
    "HOLD_FENCE_SQL",
    "HIGHEST_STORED_ID_SQL",
    "MARK_POLLED_SQL",
    "RECORD_FAILURE_SQL",
    "RECORD_REQUESTS_SQL",
    "COUNT_FENCED_SQL",
    "INSERT_EVENTS_SQL",
    "COPY_EVENTS_SQL",
    "INSERT_QUARANTINE_SQL",
    "LAST_ERROR_CHARS",
    # reads
    "ID_SPAN_SQL",
    "ACCOUNTED_BLOCKS_SQL",
    "GAPS_SQL",
    "RECENT_INGEST_TIMES_SQL",
    "RECENT_MINUTES_SQL",
    "UPSERT_ROLLUP_SQL",
    "STATUS_SQL",
    "ROW_COUNTS_SQL",
    "QUARANTINE_SUMMARY_SQL",
    "SOURCE_ACTIVITY_SQL",
    "SNAPSHOT_SQL",
    "COUNTER_DRIFT_SQL",
    "STUCK_SQL",
    "STOPS_BEFORE_PHRASE",
    "STOPS_BEFORE_REASON",
    "MALFORMED_BODY_REASON",
    "STUCK_SIGHTINGS",
    "STUCK_AFTER_S",
    # the counter audit
    "COUNTER_BLOCKS_PER_CALL",
    "ENSURE_AUDIT_SQL",
    "LOCK_AUDIT_SQL",
    "VERIFY_BLOCKS_SQL",
    "SAVE_AUDIT_SQL",
    "LOCK_PARTITION_SQL",
    "BLOCK_COUNTS_SQL",
    "CLEAR_DRIFT_SQL",
    # operations
    "LOCK_STATE_SQL",
    "REWIND_SQL",
    "DELETE_EVENTS_FROM_SQL",
    "QUARANTINE_COLUMNS",
    "QUARANTINE_LIST_SQL",
    "QUARANTINE_COUNT_SQL",
    "QUARANTINE_ITEM_SQL",
    "LOCK_QUARANTINE_ITEM_SQL",
    "STORED_IDS_SQL",
    "RESOLVE_QUARANTINE_SQL",
]
