"""Store: the events table, the cursor, the fence and the quarantine, in Postgres.

Fence timeline it defends against:

1. A holds the lease with epoch 7, fetches a page, then pauses past its lease.
2. B takes the lease: ``begin()`` bumps the epoch to 8 and reads the cursor.
3. A wakes and commits: its cursor UPDATE says ``WHERE epoch = 7`` and matches
   nothing, so the whole transaction (events included) is rolled back and A
   stops. Events and cursor are one transaction, so they never disagree.

The cursor UPDATE runs first in the transaction: it row-locks the source's
state, so two committers of one source queue up, and the second re-checks the
epoch after the first commits (READ COMMITTED re-evaluates the WHERE).

Commits near COPY speed: once the fence holds the row lock, the page's ids
above the highest stored id of the source cannot collide with a stored event
(every writer of the source queues on that lock), so they go in by ``COPY``.
Ids at or below it - a source re-sending, or a replay after the cursor was
rewound over stored events - take ``INSERT ... ON CONFLICT DO NOTHING``.

Counters kept by Postgres itself (statement triggers on ``events`` and on every
partition, so an operator's DELETE or TRUNCATE keeps them true as well as the
store's commits): ``id_blocks`` holds how many events each block of 65,536
consecutive ids stores, ``events_per_minute`` how many were ingested each
minute. Checks and the rollup read those, never every row.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Iterator

import psycopg
from psycopg import sql

from ..config import is_valid_source_name, redact_url
from .page import Event, Quarantined

# Serialises schema changes across processes (any constant works; this is "event-ingest").
SCHEMA_LOCK_KEY = 0x6576656E74696E

# Bump with a new step in Store._upgrade when the schema changes; databases record theirs.
SCHEMA_VERSION = 4

# id_blocks groups ids by event_id >> ID_BLOCK_BITS: a block is small enough to scan for the exact
# missing ranges in milliseconds, and large enough that a source's block rows stay few (458 at 30M ids).
ID_BLOCK_BITS = 16
ID_BLOCK_SIZE = 1 << ID_BLOCK_BITS

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS events (
    source       text        NOT NULL,
    event_id     bigint      NOT NULL,
    payload      jsonb,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
) PARTITION BY LIST (source);

CREATE TABLE IF NOT EXISTS source_state (
    source          text        PRIMARY KEY,
    cursor          bigint      NOT NULL DEFAULT 0,
    epoch           bigint      NOT NULL DEFAULT 0,
    events_stored   bigint      NOT NULL DEFAULT 0,
    last_ingest_at  timestamptz,
    fenced_commits  bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS quarantine (
    id           bigserial   PRIMARY KEY,
    source       text        NOT NULL,
    event_id     bigint,
    raw          bytea       NOT NULL,
    reason       text        NOT NULL,
    digest       text        NOT NULL,
    seen_count   integer     NOT NULL DEFAULT 1,
    received_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, digest)
);

-- Events stored per source per minute of ingested_at, kept by the counting triggers (version 2).
CREATE TABLE IF NOT EXISTS events_per_minute (
    source   text        NOT NULL,
    minute   timestamptz NOT NULL,
    events   bigint      NOT NULL,
    PRIMARY KEY (source, minute)
);

CREATE TABLE IF NOT EXISTS schema_version (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version   integer NOT NULL
);
"""

# Databases made before schema_version existed hold version 1 (the tables above, no counters).
READ_SCHEMA_VERSION_SQL = "SELECT coalesce((SELECT version FROM schema_version), 1)"
WRITE_SCHEMA_VERSION_SQL = """
INSERT INTO schema_version (version) VALUES (%(version)s)
ON CONFLICT (only_row) DO UPDATE SET version = excluded.version
"""

# Version 2: counters that make checks and rollup cost the same at any table size.
# The triggers take the whole statement's rows at once (transition tables), so a page of 1000
# costs one upsert per block and per minute it touches, not one per row.
_ADD_COUNTS = f"""
    WITH counted AS MATERIALIZED (
        SELECT source, event_id >> {ID_BLOCK_BITS} AS block, date_trunc('minute', ingested_at) AS minute,
               count(*) AS events
        FROM new_rows GROUP BY 1, 2, 3
    ), blocks AS (
        INSERT INTO id_blocks AS b (source, block, events)
        SELECT source, block, sum(events) FROM counted GROUP BY 1, 2
        ON CONFLICT (source, block) DO UPDATE SET events = b.events + excluded.events
    ), minutes AS (
        INSERT INTO events_per_minute AS m (source, minute, events)
        SELECT source, minute, sum(events) FROM counted GROUP BY 1, 2
        ON CONFLICT (source, minute) DO UPDATE SET events = m.events + excluded.events
    )
    -- events_stored counts insertions (an UPDATE moves rows, it stores none).
    UPDATE source_state s SET events_stored = s.events_stored + n.events
    FROM (SELECT source, sum(events) AS events FROM counted GROUP BY source) n
    WHERE s.source = n.source AND TG_OP = 'INSERT';
"""
_REMOVE_COUNTS = f"""
    UPDATE id_blocks b SET events = b.events - d.events
    FROM (SELECT source, event_id >> {ID_BLOCK_BITS} AS block, count(*) AS events FROM old_rows GROUP BY 1, 2) d
    WHERE b.source = d.source AND b.block = d.block;
    DELETE FROM id_blocks WHERE events = 0 AND (source, block) IN
        (SELECT DISTINCT source, event_id >> {ID_BLOCK_BITS} FROM old_rows);
    UPDATE events_per_minute m SET events = m.events - d.events
    FROM (SELECT source, date_trunc('minute', ingested_at) AS minute, count(*) AS events FROM old_rows
          GROUP BY 1, 2) d
    WHERE m.source = d.source AND m.minute = d.minute;
    DELETE FROM events_per_minute WHERE events = 0 AND (source, minute) IN
        (SELECT DISTINCT source, date_trunc('minute', ingested_at) FROM old_rows);
"""
COUNTERS_SQL = f"""
CREATE TABLE IF NOT EXISTS id_blocks (
    source  text    NOT NULL,
    block   bigint  NOT NULL,  -- event_id >> {ID_BLOCK_BITS}
    events  bigint  NOT NULL,
    PRIMARY KEY (source, block)
);

-- The gap and cursor checks look quarantined ids up by source and id.
CREATE INDEX IF NOT EXISTS quarantine_source_event_id ON quarantine (source, event_id)
    WHERE event_id IS NOT NULL;

-- One statement per page: the rows are grouped once, then every counter is upserted from the groups.
CREATE OR REPLACE FUNCTION events_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_ADD_COUNTS}
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION events_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_REMOVE_COUNTS}
    RETURN NULL;
END $$;

-- An UPDATE may move an event to another id, minute or source: take the old rows out, put the new in.
CREATE OR REPLACE FUNCTION events_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_REMOVE_COUNTS}
{_ADD_COUNTS}
    RETURN NULL;
END $$;

-- TRUNCATE has no transition table. On a partition the trigger names its source; TRUNCATE of the
-- parent fires the partitions' triggers too, so the parent's (no argument) is the catch-all.
CREATE OR REPLACE FUNCTION events_count_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM id_blocks WHERE TG_NARGS = 0 OR source = TG_ARGV[0];
    DELETE FROM events_per_minute WHERE TG_NARGS = 0 OR source = TG_ARGV[0];
    RETURN NULL;
END $$;
"""

# Statement triggers fire only for the table a statement names: the parent for the store's writes,
# a partition for an operator's `DELETE FROM events_<source>`. So both carry them.
COUNTING_TRIGGERS = {
    "events_count_insert": "AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
                           "EXECUTE FUNCTION events_count_insert()",
    "events_count_delete": "AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
                           "EXECUTE FUNCTION events_count_delete()",
    "events_count_update": "AFTER UPDATE ON {table} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
                           "FOR EACH STATEMENT EXECUTE FUNCTION events_count_update()",
    "events_count_truncate": "AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION "
                             "events_count_truncate({source})",
}

# Version 3: when a source was last polled (freshness). A step, not a line of SCHEMA_SQL: an ALTER TABLE
# takes its lock even when the column exists, and would queue behind (and hold up) every commit.
ADD_LAST_POLL_AT_SQL = "ALTER TABLE source_state ADD COLUMN IF NOT EXISTS last_poll_at timestamptz"

# Version 4: what operators read and do. Request and error counters per source (flushed by the drain with
# the writes it makes anyway), where each quarantined item was served (the lastId: a source that cannot get
# past its cursor is found by an index probe), and what an operator did with an item (requeued, discarded).
# `recent_*` decay with a time constant of an hour, so their ratio is the recent error rate.
ADD_OPERATIONS_COLUMNS_SQL = (
    """ALTER TABLE source_state
        ADD COLUMN IF NOT EXISTS requests        bigint      NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS errors          bigint      NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS recent_requests float8      NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS recent_errors   float8      NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS recent_at       timestamptz NOT NULL DEFAULT now(),
        ADD COLUMN IF NOT EXISTS last_error      text,
        ADD COLUMN IF NOT EXISTS last_error_at   timestamptz""",
    """ALTER TABLE quarantine
        ADD COLUMN IF NOT EXISTS at_cursor   bigint,
        ADD COLUMN IF NOT EXISTS resolution  text CHECK (resolution IN ('requeued', 'discarded')),
        ADD COLUMN IF NOT EXISTS resolved_at timestamptz,
        ADD COLUMN IF NOT EXISTS resolution_note text""",
    "CREATE INDEX IF NOT EXISTS quarantine_open_at_cursor ON quarantine (source, at_cursor) WHERE resolution IS NULL",
)

# Writers wait here while counters are rebuilt from the rows, so no row is counted twice or missed.
LOCK_EVENTS_SQL = "LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"

# The partition of a source, and how many of the counting triggers it carries.
PARTITION_STATE_SQL = """
SELECT to_regclass(quote_ident(%(partition)s)) IS NOT NULL,
       (SELECT count(*) FROM pg_trigger
        WHERE tgrelid = to_regclass(quote_ident(%(partition)s)) AND tgname = ANY(%(triggers)s))
"""

# Counters rebuilt from the rows of one source (schema upgrade; a partition found without its triggers).
RECOUNT_SQL = (
    "DELETE FROM id_blocks WHERE source = %(source)s",
    f"""INSERT INTO id_blocks (source, block, events)
        SELECT source, event_id >> {ID_BLOCK_BITS}, count(*) FROM events WHERE source = %(source)s GROUP BY 1, 2""",
    "DELETE FROM events_per_minute WHERE source = %(source)s",
    """INSERT INTO events_per_minute (source, minute, events)
       SELECT source, date_trunc('minute', ingested_at), count(*) FROM events WHERE source = %(source)s
       GROUP BY 1, 2""",
)

SOURCES_SQL = "SELECT source FROM source_state ORDER BY source"

# Open the drain's epoch: every earlier holder's commits are refused from now on.
BEGIN_EPOCH_SQL = """
UPDATE source_state SET epoch = epoch + 1
WHERE source = %(source)s
RETURNING epoch, cursor
"""

ENSURE_STATE_SQL = "INSERT INTO source_state (source) VALUES (%(source)s) ON CONFLICT (source) DO NOTHING"

# Requests (and failed ones) since the drain's last write, added to the counters by a statement that runs
# anyway. The recent counts decay by e^(-t / 1 h) (clamped: exp() of a large negative is an underflow error).
_COUNT_REQUESTS = """
    requests = requests + %(requests)s, errors = errors + %(errors)s,
    recent_requests = recent_requests * exp(greatest(extract(epoch FROM recent_at - now()) / 3600, -700))
                      + %(requests)s,
    recent_errors = recent_errors * exp(greatest(extract(epoch FROM recent_at - now()) / 3600, -700)) + %(errors)s,
    recent_at = now()"""

# The fence: matches only if nobody took the source over and the cursor is where we left it.
ADVANCE_CURSOR_SQL = f"""
UPDATE source_state
SET cursor = %(new_cursor)s, last_ingest_at = now(), last_poll_at = now(), {_COUNT_REQUESTS}
WHERE source = %(source)s AND epoch = %(epoch)s AND cursor = %(old_cursor)s
"""

# The fence alone, for an operator's commit that stores events but moves nothing (a requeue): it takes the
# same row lock and refuses the same stale holders, and does not pretend the source was polled.
HOLD_FENCE_SQL = """
UPDATE source_state SET epoch = epoch
WHERE source = %(source)s AND epoch = %(epoch)s AND cursor = %(cursor)s
"""

# Run after the fence, as its own statement: READ COMMITTED gives it a snapshot taken after the row
# lock was granted, so it sees every event committed by the writers that queued before us.
HIGHEST_STORED_ID_SQL = "SELECT max(event_id) FROM events WHERE source = %(source)s"

# A tailing drain of an idle source says it is still polling (freshness sees it), fenced like a commit.
MARK_POLLED_SQL = f"""
UPDATE source_state SET last_poll_at = now(), {_COUNT_REQUESTS}
WHERE source = %(source)s AND epoch = %(epoch)s
"""

# A failed attempt: counted with its reason (one write per failure, never per request that worked).
# Not fenced: a stale holder's requests reached the source all the same.
RECORD_FAILURE_SQL = f"""
UPDATE source_state SET {_COUNT_REQUESTS}, last_error = %(error)s, last_error_at = now()
WHERE source = %(source)s
"""

# Requests not yet counted when a drain ends (the last empty poll of a drain that ends caught up).
RECORD_REQUESTS_SQL = f"UPDATE source_state SET {_COUNT_REQUESTS} WHERE source = %(source)s"

COUNT_FENCED_SQL = "UPDATE source_state SET fenced_commits = fenced_commits + 1 WHERE source = %(source)s"

# Ids that may already be stored (at or below the highest stored id): conflicts are skipped.
INSERT_EVENTS_SQL = """
INSERT INTO events (source, event_id, payload)
SELECT %(source)s, u.event_id, u.payload::jsonb
FROM unnest(%(ids)s::bigint[], %(payloads)s::text[]) AS u(event_id, payload)
ON CONFLICT (source, event_id) DO NOTHING
"""

# Ids above the highest stored id: nothing to conflict with.
COPY_EVENTS_SQL = "COPY events (source, event_id, payload) FROM STDIN"

# The same bad bytes seen again (a source serving one broken page to every retry)
# are counted, not copied.
# `at_cursor` is the lastId it was served at (latest sighting). Seen again after an operator requeued or
# discarded it, it is open again: the source still serves it.
INSERT_QUARANTINE_SQL = """
INSERT INTO quarantine (source, event_id, raw, reason, digest, at_cursor)
VALUES (%(source)s, %(event_id)s, %(raw)s, %(reason)s, %(digest)s, %(at_cursor)s)
ON CONFLICT (source, digest) DO UPDATE
SET seen_count = quarantine.seen_count + 1, last_seen_at = now(),
    at_cursor = coalesce(excluded.at_cursor, quarantine.at_cursor),
    resolution = NULL, resolved_at = NULL, resolution_note = NULL
"""

# Lowest and highest stored id, lowest and highest quarantined id: four index probes.
ID_SPAN_SQL = """
SELECT (SELECT min(event_id) FROM events WHERE source = %(source)s),
       (SELECT max(event_id) FROM events WHERE source = %(source)s),
       (SELECT min(event_id) FROM quarantine WHERE source = %(source)s AND event_id IS NOT NULL),
       (SELECT max(event_id) FROM quarantine WHERE source = %(source)s AND event_id IS NOT NULL)
"""

# Ids accounted for (stored, or quarantined with their id) per block. A quarantined id counts
# once, and only if it is not stored too (a duplicate within a page is both).
ACCOUNTED_BLOCKS_SQL = f"""
SELECT block, sum(ids)::bigint FROM (
    SELECT block, events AS ids FROM id_blocks WHERE source = %(source)s
    UNION ALL
    SELECT q.event_id >> {ID_BLOCK_BITS}, count(DISTINCT q.event_id) FROM quarantine q
    WHERE q.source = %(source)s AND q.event_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM events e WHERE e.source = %(source)s AND e.event_id = q.event_id)
    GROUP BY 1
) accounted
GROUP BY block
ORDER BY block
"""

# Missing ids between first and last (inclusive): before each accounted-for id (back to the one
# before it, or to `first`) and after the last one (up to `last`). One ordered pass over the window.
GAPS_SQL = """
WITH ids AS (
    SELECT event_id FROM events
    WHERE source = %(source)s AND event_id BETWEEN %(first)s::bigint AND %(last)s::bigint
    UNION ALL
    SELECT DISTINCT q.event_id FROM quarantine q
    WHERE q.source = %(source)s AND q.event_id BETWEEN %(first)s::bigint AND %(last)s::bigint
      AND NOT EXISTS (SELECT 1 FROM events e WHERE e.source = %(source)s AND e.event_id = q.event_id)
), ordered AS (
    SELECT event_id, lag(event_id) OVER w AS previous, lead(event_id) OVER w AS next
    FROM ids WINDOW w AS (ORDER BY event_id)
)
SELECT g.first_missing, g.last_missing
FROM ordered o
CROSS JOIN LATERAL (VALUES
    (coalesce(o.previous + 1, %(first)s::bigint), o.event_id - 1),
    -- (o.event_id + 1 only where it is needed: the highest bigint has no successor)
    (CASE WHEN o.next IS NULL AND o.event_id < %(last)s::bigint THEN o.event_id + 1 END, %(last)s::bigint)
) AS g(first_missing, last_missing)
WHERE (o.previous IS NULL OR o.event_id - o.previous > 1 OR o.next IS NULL)  -- before the lateral: few rows
  AND g.first_missing <= g.last_missing
UNION ALL
SELECT %(first)s::bigint, %(last)s::bigint WHERE NOT EXISTS (SELECT 1 FROM ids)
ORDER BY 1
LIMIT %(limit)s
"""

RECENT_INGEST_TIMES_SQL = """
SELECT ingested_at FROM events
WHERE source = %(source)s AND ingested_at >= now() - make_interval(hours => %(hours)s)
"""

# The minutes since the start of the minute an hour (or `hours`) ago: at most 60 * hours + 1 rows.
RECENT_MINUTES_SQL = """
SELECT minute, events FROM events_per_minute
WHERE source = %(source)s AND minute >= date_trunc('minute', now() - make_interval(hours => %(hours)s))
  AND events > 0
ORDER BY minute
"""

UPSERT_ROLLUP_SQL = """
INSERT INTO events_per_minute (source, minute, events) VALUES (%s, %s, %s)
ON CONFLICT (source, minute) DO UPDATE SET events = excluded.events
"""

# Events from the block counters and the highest id from the index: no row is counted.
STATUS_SQL = """
SELECT s.source, s.cursor, s.epoch, s.last_ingest_at, s.fenced_commits, s.last_poll_at,
       (SELECT coalesce(sum(b.events), 0) FROM id_blocks b WHERE b.source = s.source) AS events,
       (SELECT coalesce(max(event_id), 0) FROM events e WHERE e.source = s.source) AS max_event_id,
       (SELECT count(*) FROM quarantine q WHERE q.source = s.source AND q.resolution IS NULL) AS quarantined,
       s.created_at, s.requests, s.errors,
       CASE WHEN s.recent_requests > 0 THEN s.recent_errors / s.recent_requests END AS recent_error_rate,
       s.last_error, s.last_error_at,
       extract(epoch FROM now() - greatest(s.last_ingest_at, s.last_poll_at))::float8 AS poll_age_s
FROM source_state s
WHERE %(source)s::text IS NULL OR s.source = %(source)s
ORDER BY s.source
"""

# Seconds since the source was last polled successfully, on the database's clock (one clock for all).
POLL_AGE_SQL = """
SELECT extract(epoch FROM now() - greatest(last_ingest_at, last_poll_at))::float8
FROM source_state WHERE source = %(source)s
"""

# Rows stored per source from the block counters (true after deletes too; no row is counted).
ROW_COUNTS_SQL = """
SELECT s.source, (SELECT coalesce(sum(b.events), 0) FROM id_blocks b WHERE b.source = s.source)
FROM source_state s WHERE s.source = ANY(%(sources)s)
"""

# What the quarantine holds open for one source (not requeued or discarded by an operator): how many,
# the newest reason, the highest id kept.
QUARANTINE_SUMMARY_SQL = """
SELECT count(*),
       (SELECT reason FROM quarantine WHERE source = %(source)s AND resolution IS NULL
        ORDER BY last_seen_at DESC LIMIT 1),
       coalesce(max(event_id), 0)
FROM quarantine WHERE source = %(source)s AND resolution IS NULL
"""

# Schema as found, for readers that must not change it (status): are the tables there, is the version.
TABLES_FOUND_SQL = "SELECT to_regclass('source_state') IS NOT NULL, to_regclass('schema_version') IS NOT NULL"

# Replay: the state row locked first, so a commit of the source queues behind the replay and then finds
# its epoch gone (fenced); the checks of from_id against the cursor are made on the locked row.
LOCK_STATE_SQL = "SELECT cursor, epoch FROM source_state WHERE source = %(source)s FOR UPDATE"
REWIND_SQL = """
UPDATE source_state SET epoch = epoch + 1, cursor = %(from_id)s
WHERE source = %(source)s
RETURNING epoch
"""
# The counting triggers take the deleted rows out of id_blocks and events_per_minute.
DELETE_EVENTS_FROM_SQL = "DELETE FROM events WHERE source = %(source)s AND event_id >= %(delete_from)s"

QUARANTINE_COLUMNS = """q.id, q.source, q.event_id, q.reason, q.seen_count, q.received_at, q.last_seen_at,
       q.at_cursor, q.resolution, q.resolved_at, q.resolution_note, length(q.raw)"""

# Newest first; open items only unless every item is asked for.
QUARANTINE_LIST_SQL = f"""
SELECT {QUARANTINE_COLUMNS}
FROM quarantine q
WHERE (%(source)s::text IS NULL OR q.source = %(source)s) AND (%(all)s OR q.resolution IS NULL)
ORDER BY q.id DESC
LIMIT %(limit)s
"""
QUARANTINE_COUNT_SQL = """
SELECT count(*) FROM quarantine q
WHERE (%(source)s::text IS NULL OR q.source = %(source)s) AND (%(all)s OR q.resolution IS NULL)
"""
QUARANTINE_ITEM_SQL = f"SELECT {QUARANTINE_COLUMNS}, q.raw FROM quarantine q WHERE q.id = %(id)s"
# Inside an operator's commit: the row is locked, so two requeues of one item cannot both store it.
LOCK_QUARANTINE_ITEM_SQL = "SELECT source, resolution FROM quarantine WHERE id = %(id)s FOR UPDATE"
STORED_IDS_SQL = "SELECT event_id FROM events WHERE source = %(source)s AND event_id = ANY(%(ids)s) ORDER BY 1"
RESOLVE_QUARANTINE_SQL = """
UPDATE quarantine SET resolution = %(resolution)s, resolved_at = now(), resolution_note = %(note)s
WHERE id = %(id)s
"""

# A source that cannot get past its cursor because what is served there cannot be read: an open item
# quarantined at the cursor that is either
#   an item with no readable id the page stopped before (page.py: the cursor stays before it), or
#   a whole body that is not a page, seen again and again there, with no successful poll since it was
#   last seen nor for `after_s` (a body broken once and then served fine is not stuck).
# One probe of the open-items index at (source, cursor).
STUCK_SQL = """
SELECT q.id, q.reason, q.at_cursor, q.seen_count, q.last_seen_at
FROM source_state s
JOIN quarantine q ON q.source = s.source AND q.at_cursor = s.cursor AND q.resolution IS NULL
WHERE s.source = %(source)s
  AND ((q.event_id IS NULL AND q.reason LIKE %(stops_before)s)
       OR (q.reason LIKE %(malformed)s AND q.seen_count >= %(sightings)s
           AND q.last_seen_at > coalesce(greatest(s.last_ingest_at, s.last_poll_at), '-infinity')
           AND coalesce(greatest(s.last_ingest_at, s.last_poll_at), '-infinity')
               < now() - make_interval(secs => %(after_s)s)))
ORDER BY q.last_seen_at DESC
LIMIT 1
"""
# The reasons page.py and client.py give those items (matched as LIKE patterns).
STOPS_BEFORE_REASON = "%nor can its id, so the cursor stops before it%"
MALFORMED_BODY_REASON = "malformed page at lastId=%"
STUCK_SIGHTINGS = 2
STUCK_AFTER_S = 60.0

# Every source with state and when it was last active (renames and removals are judged from this).
SOURCE_ACTIVITY_SQL = """
SELECT source, created_at, greatest(last_ingest_at, last_poll_at, created_at) FROM source_state ORDER BY source
"""

# A source and everything kept for it (benchmarks clean up with it). Dropping the partition fires
# no trigger, so its counters go explicitly.
FORGET_SOURCE_SQL = (
    "DELETE FROM id_blocks WHERE source = %(source)s",
    "DELETE FROM events_per_minute WHERE source = %(source)s",
    "DELETE FROM quarantine WHERE source = %(source)s",
    "DELETE FROM source_state WHERE source = %(source)s",
)


class StoreError(RuntimeError):
    """Postgres could not be reached or refused a statement."""


class Fenced(RuntimeError):
    """Another holder took the source over: this commit was rolled back."""


class StateConflict(RuntimeError):
    """The rows are not in the state an operator's request needs (no state row, an item already stored or
    requeued): nothing was changed."""


@dataclass(frozen=True)
class CommitResult:
    inserted: int
    already_stored: int
    quarantined: int
    copied: int = 0  # of `inserted`, how many went in by COPY (ids above the highest stored id)


@dataclass(frozen=True)
class SourceStatus:
    source: str
    cursor: int
    epoch: int
    events: int
    max_event_id: int
    quarantined: int
    fenced_commits: int
    last_ingest_at: datetime | None
    last_poll_at: datetime | None = None  # the last successful poll (a page committed, or nothing new)
    created_at: datetime | None = None
    requests: int = 0  # sent to the source, as flushed by drains (a drain in progress holds a few back)
    errors: int = 0  # of them, failed attempts
    recent_error_rate: float | None = None  # failed / sent, decaying with a time constant of an hour
    last_error: str | None = None
    last_error_at: datetime | None = None
    poll_age_s: float | None = None  # seconds since the last successful poll, on Postgres' clock


@dataclass(frozen=True)
class QuarantineItem:
    id: int
    source: str
    event_id: int | None
    reason: str
    seen_count: int
    received_at: datetime
    last_seen_at: datetime
    at_cursor: int | None  # the lastId it was (last) served at; None before schema version 4
    resolution: str | None  # None (open), "requeued" or "discarded"
    resolved_at: datetime | None
    resolution_note: str | None
    size: int  # bytes of raw
    raw: bytes | None = None  # only when one item is read whole

    @property
    def state(self) -> str:
        return self.resolution or "open"


@dataclass(frozen=True)
class Stuck:
    quarantine_id: int
    reason: str
    at_cursor: int
    seen_count: int
    last_seen_at: datetime


@dataclass(frozen=True)
class SourceActivity:
    source: str
    created_at: datetime
    last_active_at: datetime  # the last commit or poll, or when the state was made


@dataclass(frozen=True)
class Gap:
    first_missing: int
    last_missing: int

    @property
    def size(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass(frozen=True)
class IdSpan:
    """Lowest and highest id of a source among stored events and quarantined items (None: none)."""

    lowest_stored: int | None
    highest_stored: int | None
    lowest_quarantined: int | None
    highest_quarantined: int | None

    @property
    def lowest(self) -> int | None:
        return min((i for i in (self.lowest_stored, self.lowest_quarantined) if i is not None), default=None)

    @property
    def highest(self) -> int | None:
        return max((i for i in (self.highest_stored, self.highest_quarantined) if i is not None), default=None)


def partition_name(source: str) -> str:
    """Name of the events partition of a source, within Postgres' 63-byte identifiers."""
    if not is_valid_source_name(source):
        raise ValueError(f"invalid source name {source!r}")
    name = f"events_{source}"
    if len(name) > 63:
        # Truncation could make two long names collide: keep a digest of the whole name.
        name = f"events_{source[:40]}_{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    return name


def quarantine_params(source: str, item: Quarantined, at_cursor: int | None = None) -> dict:
    digest = hashlib.sha256(item.raw + b"\0" + item.reason.encode()).hexdigest()
    return {"source": source, "event_id": item.event_id, "raw": item.raw, "reason": item.reason, "digest": digest,
            "at_cursor": at_cursor}


def request_counts(requests: int, errors: int = 0) -> dict:
    return {"requests": requests, "errors": errors}


# A last_error is a line for an operator, not a log: long reasons are cut.
LAST_ERROR_CHARS = 500


class Store:
    """The statements the ingest needs, over a small pool of Postgres connections.

    Every operation borrows one connection, runs one transaction and gives it back, so one Store
    can serve many threads (``pool_size`` connections at most; a thread waits when all are busy).
    A connection that broke is dropped and replaced by the next operation that needs one.
    ``conn`` is the first connection, for tests and tools that run their own SQL from one thread.
    """

    def __init__(
        self, url: str, *, application_name: str = "event-ingest", connect_timeout_s: int = 5, pool_size: int = 1,
        read_only: bool = False,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.url = url
        self._application_name = application_name
        self._read_only = read_only  # every transaction BEGIN READ ONLY: Postgres refuses any write
        self._connect_timeout_s = connect_timeout_s
        self._pool_size = pool_size
        self._pool = threading.Condition()
        self._idle: list[psycopg.Connection] = []
        self._open = 0  # connections open or being opened, idle or lent
        self._closed = False
        self._first = self._connect()  # now, so a bad URL fails here and not at the first commit
        self._idle.append(self._first)
        self._open = 1

    @property
    def conn(self) -> psycopg.Connection:
        return self._first

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.url, application_name=self._application_name,
                                   connect_timeout=self._connect_timeout_s, autocommit=False)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to Postgres at {redact_url(self.url)}: {_first_line(exc)}") from None
        conn.read_only = self._read_only
        return conn

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[psycopg.Connection]:
        with self._pool:
            while True:
                if self._closed:
                    raise StoreError("the store is closed")
                if self._idle:
                    conn = self._idle.pop()
                    break
                if self._open < self._pool_size:
                    conn = None
                    self._open += 1  # the slot is ours while we connect outside the lock
                    break
                self._pool.wait()
        if conn is None:
            try:
                conn = self._connect()
            except BaseException:
                with self._pool:
                    self._open -= 1
                    self._pool.notify()
                raise
            if self._first.closed:
                self._first = conn
        try:
            yield conn
        finally:
            with self._pool:
                if self._closed or conn.closed or conn.broken:
                    self._open -= 1
                    conn.close()
                else:
                    self._idle.append(conn)
                self._pool.notify()

    def close(self) -> None:
        with self._pool:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._pool.notify_all()
        for conn in idle:
            conn.close()
        self._first.close()  # lent out to a test? it is closed all the same

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, what: str, fn):
        try:
            with self._borrow() as conn, conn.transaction():
                return fn(conn.cursor())
        except (Fenced, StoreError):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"Postgres {what} failed: {_first_line(exc)}") from exc

    def apply_schema(self, sources: Iterable[str] = ()) -> None:
        """Create tables and per-source partitions if missing, and bring an older database up to
        SCHEMA_VERSION; safe to run from many processes at once."""
        sources = list(sources)

        def apply(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            cur.execute(SCHEMA_SQL)
            cur.execute(READ_SCHEMA_VERSION_SQL)
            version = cur.fetchone()[0]
            if version < SCHEMA_VERSION:
                self._upgrade(cur, version)
            for source in sources:
                self._ensure_source(cur, source)

        self._run("schema setup", apply)

    def _upgrade(self, cur, version: int) -> None:
        """Bring a database at `version` to SCHEMA_VERSION, in the schema transaction (all or nothing)."""
        if version < 2:
            # Writers wait until the counters are built from the rows they already committed.
            cur.execute(LOCK_EVENTS_SQL)
            cur.execute(COUNTERS_SQL)
            self._create_counting_triggers(cur, "events", None)
            cur.execute(SOURCES_SQL)
            for (source,) in cur.fetchall():
                self._count_partition(cur, source)
        if version < 3:
            cur.execute(ADD_LAST_POLL_AT_SQL)
        if version < 4:
            for statement in ADD_OPERATIONS_COLUMNS_SQL:
                cur.execute(statement)
        cur.execute(WRITE_SCHEMA_VERSION_SQL, {"version": SCHEMA_VERSION})

    @staticmethod
    def _create_counting_triggers(cur, table: str, source: str | None) -> None:
        for name, definition in COUNTING_TRIGGERS.items():
            cur.execute(
                sql.SQL("CREATE OR REPLACE TRIGGER {} " + definition).format(
                    sql.Identifier(name), table=sql.Identifier(table),
                    source=sql.Literal(source) if source is not None else sql.SQL(""),
                )
            )

    def _count_partition(self, cur, source: str) -> bool:
        """Give an existing partition its counting triggers and counters, if it lacks them (made before
        version 2, or by an older consumer since). False if the source has no partition."""
        partition = partition_name(source)
        cur.execute(PARTITION_STATE_SQL, {"partition": partition, "triggers": list(COUNTING_TRIGGERS)})
        exists, triggers = cur.fetchone()
        if exists and triggers < len(COUNTING_TRIGGERS):
            # Creating a trigger locks the partition against writers: no row lands uncounted meanwhile.
            self._create_counting_triggers(cur, partition, source)
            for statement in RECOUNT_SQL:
                cur.execute(statement, {"source": source})
        return bool(exists)

    def _ensure_source(self, cur, source: str) -> None:
        if not self._count_partition(cur, source):
            cur.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF events FOR VALUES IN ({})").format(
                    sql.Identifier(partition_name(source)), sql.Literal(source)
                )
            )
            self._create_counting_triggers(cur, partition_name(source), source)
        cur.execute(ENSURE_STATE_SQL, {"source": source})

    def ensure_source(self, source: str) -> None:
        def ensure(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            self._ensure_source(cur, source)

        self._run(f"setup of source {source!r}", ensure)

    def recount(self, source: str) -> None:
        """Rebuild a source's counters from its rows (O(rows)). Only needed after writes that bypass
        triggers: session_replication_role = replica, DISABLE TRIGGER, a partition dropped or detached."""

        def recount(cur):
            cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(partition_name(source))))
            for statement in RECOUNT_SQL:
                cur.execute(statement, {"source": source})

        self._run(f"recount of {source!r}", recount)

    def forget_source(self, source: str) -> None:
        """Drop a source's partition, counters, quarantine and state (benchmarks clean up with it)."""

        def forget(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(partition_name(source))))
            for statement in FORGET_SOURCE_SQL:
                cur.execute(statement, {"source": source})

        self._run(f"removal of source {source!r}", forget)

    def begin_epoch(self, source: str) -> tuple[int, int]:
        """Take the source over: bump its epoch; returns (epoch, cursor)."""

        def begin(cur):
            cur.execute(BEGIN_EPOCH_SQL, {"source": source})
            row = cur.fetchone()
            if row is None:
                raise StoreError(f"source {source!r} has no state row; run apply_schema() for it first")
            return int(row[0]), int(row[1])

        return self._run(f"epoch bump of {source!r}", begin)

    def commit_page(
        self,
        source: str,
        *,
        epoch: int,
        old_cursor: int,
        new_cursor: int,
        events: list[Event],
        quarantined: list[Quarantined] = (),
        requests: int = 0,
    ) -> CommitResult:
        """Store one page and advance the cursor in ONE transaction, fenced by epoch and old cursor.
        ``requests``: sent since the drain's last write, counted in the same statement as the cursor."""

        def commit(cur):
            cur.execute(
                ADVANCE_CURSOR_SQL,
                {"source": source, "epoch": epoch, "old_cursor": old_cursor, "new_cursor": new_cursor,
                 **request_counts(requests)},
            )
            if cur.rowcount != 1:
                raise Fenced(
                    f"source {source!r}: commit refused by the fence (epoch {epoch}, cursor {old_cursor}): "
                    "another consumer took this source over"
                )
            return self._store_page(cur, source, events, quarantined, at_cursor=old_cursor)

        try:
            return self._run(f"commit for {source!r}", commit)
        except Fenced:
            self._run("fence count", lambda cur: cur.execute(COUNT_FENCED_SQL, {"source": source}))
            raise

    @staticmethod
    def _store_page(cur, source: str, events: list[Event], quarantined: Iterable[Quarantined],
                    at_cursor: int | None) -> CommitResult:
        """The page's rows, inside a transaction that already holds the fence (the state row lock)."""
        quarantined = list(quarantined)
        inserted = copied = 0
        if events:
            cur.execute(HIGHEST_STORED_ID_SQL, {"source": source})
            highest = cur.fetchone()[0]
            fresh, maybe_stored = _split_page(events, highest)
            if fresh:
                with cur.copy(COPY_EVENTS_SQL) as copy:
                    for event in fresh:
                        copy.write_row((source, event.id, event.payload_json))
                copied = len(fresh)
            if maybe_stored:
                cur.execute(
                    INSERT_EVENTS_SQL,
                    {"source": source, "ids": [e.id for e in maybe_stored],
                     "payloads": [e.payload_json for e in maybe_stored]},
                )
                inserted = cur.rowcount
            inserted += copied
        for item in quarantined:
            cur.execute(INSERT_QUARANTINE_SQL, quarantine_params(source, item, at_cursor))
        return CommitResult(inserted, len(events) - inserted, len(quarantined), copied)

    def mark_polled(self, source: str, epoch: int, requests: int = 0) -> bool:
        """Record that the holder of ``epoch`` just polled ``source`` and found nothing new (and ``requests``
        sent since its last write). False if the epoch is no longer current (nothing written)."""
        return self._run(f"poll mark for {source!r}",
                         lambda cur: cur.execute(MARK_POLLED_SQL, {"source": source, "epoch": epoch,
                                                                   **request_counts(requests)}).rowcount == 1)

    def record_failure(self, source: str, *, requests: int, error: str, bad_body: Quarantined | None = None,
                       at_cursor: int | None = None) -> None:
        """A failed attempt, in one transaction: the counters (``requests`` sent since the last write, one of
        them failed), the reason as the source's last error, and the body kept if it was not a page."""

        def put(cur):
            cur.execute(RECORD_FAILURE_SQL, {"source": source, "error": error[:LAST_ERROR_CHARS],
                                             **request_counts(requests, 1)})
            if bad_body is not None:
                cur.execute(INSERT_QUARANTINE_SQL, quarantine_params(source, bad_body, at_cursor))

        self._run(f"failure record for {source!r}", put)

    def record_requests(self, source: str, requests: int) -> None:
        """Requests sent since the last write that counted them (a drain's last few, when it ends)."""
        self._run(f"request count for {source!r}",
                  lambda cur: cur.execute(RECORD_REQUESTS_SQL, {"source": source, **request_counts(requests)}))

    def quarantine(self, source: str, items: Iterable[Quarantined], at_cursor: int | None = None) -> None:
        """Keep bytes that could not be read as a page (outside any cursor move), served at ``at_cursor``."""
        items = list(items)

        def put(cur):
            for item in items:
                cur.execute(INSERT_QUARANTINE_SQL, quarantine_params(source, item, at_cursor))

        self._run(f"quarantine for {source!r}", put)

    def status(self, source: str | None = None) -> list[SourceStatus]:
        """Per-source state and counts: every source, or only ``source``."""

        def read(cur):
            cur.execute(STATUS_SQL, {"source": source})
            return [
                SourceStatus(
                    source=r[0], cursor=r[1], epoch=r[2], last_ingest_at=r[3], fenced_commits=r[4],
                    last_poll_at=r[5], events=int(r[6]), max_event_id=r[7], quarantined=r[8],
                    created_at=r[9], requests=r[10], errors=r[11], recent_error_rate=r[12], last_error=r[13],
                    last_error_at=r[14], poll_age_s=r[15],
                )
                for r in cur.fetchall()
            ]

        return self._run("status query", read)

    def poll_age_s(self, source: str) -> float | None:
        """Seconds since the last page was committed or the last poll found nothing new; None if never."""

        def read(cur):
            row = cur.execute(POLL_AGE_SQL, {"source": source}).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return self._run(f"poll age of {source!r}", read)

    def row_counts(self, sources: list[str]) -> dict[str, int]:
        """Rows stored per source, from the counters the triggers keep (no count(*))."""

        def read(cur):
            cur.execute(ROW_COUNTS_SQL, {"sources": list(sources)})
            return {name: int(n) for name, n in cur.fetchall()}

        return self._run("row counts", read)

    def source_status(self, source: str) -> SourceStatus | None:
        return next(iter(self.status(source)), None)

    def quarantine_summary(self, source: str) -> tuple[int, str | None, int]:
        """(items quarantined, the newest reason, the highest event id among them or 0)."""

        def read(cur):
            cur.execute(QUARANTINE_SUMMARY_SQL, {"source": source})
            count, reason, max_id = cur.fetchone()
            return int(count), reason, int(max_id)

        return self._run(f"quarantine summary for {source!r}", read)

    def id_span(self, source: str) -> IdSpan:
        """Lowest and highest stored and quarantined ids (index probes, not scans)."""

        def read(cur):
            cur.execute(ID_SPAN_SQL, {"source": source})
            return IdSpan(*cur.fetchone())

        return self._run(f"id span of {source!r}", read)

    def accounted_blocks(self, source: str) -> list[tuple[int, int]]:
        """(block, ids accounted for in it), ascending; a block holds ids [block << 16, (block + 1) << 16)."""

        def read(cur):
            cur.execute(ACCOUNTED_BLOCKS_SQL, {"source": source})
            return [(int(b), int(n)) for b, n in cur.fetchall()]

        return self._run(f"id blocks of {source!r}", read)

    def gaps_between(self, source: str, first: int, last: int, limit: int | None = None) -> list[Gap]:
        """Missing id ranges within [first, last]: ids neither stored nor quarantined with their id."""

        def read(cur):
            cur.execute(GAPS_SQL, {"source": source, "first": first, "last": last, "limit": limit})
            return [Gap(int(a), int(b)) for a, b in cur.fetchall()]

        return self._run(f"gap query for {source!r}", read)

    def gaps(self, source: str, limit: int = 100) -> list[Gap]:
        """Missing id ranges between the lowest and the highest accounted-for id, reading every id
        (core.checks.gap_check answers from the counters instead).

        Sources need not start at 1, so ids below the first one seen are not called missing.
        """
        span = self.id_span(source)
        if span.lowest is None:
            return []
        return self.gaps_between(source, span.lowest, span.highest, limit)

    def recent_ingest_times(self, source: str, hours: int = 1) -> list[datetime]:
        def read(cur):
            cur.execute(RECENT_INGEST_TIMES_SQL, {"source": source, "hours": hours})
            return [r[0] for r in cur.fetchall()]

        return self._run(f"ingest times of {source!r}", read)

    def recent_minutes(self, source: str, hours: int = 1) -> list[tuple[datetime, int]]:
        """(minute, events stored with that ingest minute) from the counters, oldest first."""

        def read(cur):
            cur.execute(RECENT_MINUTES_SQL, {"source": source, "hours": hours})
            return [(m, int(n)) for m, n in cur.fetchall()]

        return self._run(f"per-minute counts of {source!r}", read)

    def save_rollup(self, source: str, rows: list[tuple[datetime, int]]) -> None:
        """Upsert (minute, events) rows of events_per_minute for one source. The counting triggers keep
        that table as rows are written; counts given here replace theirs for those minutes."""
        self._run(f"rollup of {source!r}",
                  lambda cur: cur.executemany(UPSERT_ROLLUP_SQL, [(source, m, n) for m, n in rows]))

    def event_ids(self, source: str) -> list[int]:
        def read(cur):
            cur.execute("SELECT event_id FROM events WHERE source = %s ORDER BY event_id", (source,))
            return [r[0] for r in cur.fetchall()]

        return self._run(f"id listing for {source!r}", read)


    # -- what operators read and do --------------------------------------------------------------

    def schema_found(self) -> tuple[bool, int | None]:
        """(are the tables there, the schema version they are at), changing nothing."""

        def read(cur):
            tables, versioned = cur.execute(TABLES_FOUND_SQL).fetchone()
            if not tables:
                return False, None
            return True, cur.execute(READ_SCHEMA_VERSION_SQL).fetchone()[0] if versioned else 1

        return self._run("schema query", read)

    def rewind(self, source: str, from_id: int, delete_from: int | None = None) -> tuple[int, int, int]:
        """Replay: in ONE transaction, bump the epoch (a drain of the source has its next commit fenced) and
        set the cursor to ``from_id``; with ``delete_from``, delete the events with ids at or above it.
        Returns (cursor before, epoch now, events deleted). The cursor only moves back (or stays)."""

        def rewind(cur):
            row = cur.execute(LOCK_STATE_SQL, {"source": source}).fetchone()
            if row is None:
                raise StateConflict(f"source {source!r} has no state: nothing was ingested from it; nothing done")
            cursor = int(row[0])
            if from_id > cursor:
                raise StateConflict(f"source {source!r}: --from-id {from_id} is above the cursor {cursor}; nothing "
                                    "done (replay only moves the cursor back; `event-ingest skip` moves it on)")
            epoch = cur.execute(REWIND_SQL, {"source": source, "from_id": from_id}).fetchone()[0]
            deleted = 0
            if delete_from is not None:
                deleted = cur.execute(DELETE_EVENTS_FROM_SQL, {"source": source, "delete_from": delete_from}).rowcount
            return cursor, int(epoch), deleted

        return self._run(f"replay of {source!r}", rewind)

    def quarantine_items(self, source: str | None = None, *, include_resolved: bool = False,
                         limit: int = 100) -> tuple[list[QuarantineItem], int]:
        """The newest ``limit`` items (open ones unless ``include_resolved``) and how many there are in all."""

        def read(cur):
            params = {"source": source, "all": include_resolved, "limit": limit}
            items = [QuarantineItem(*r) for r in cur.execute(QUARANTINE_LIST_SQL, params).fetchall()]
            return items, int(cur.execute(QUARANTINE_COUNT_SQL, params).fetchone()[0])

        return self._run("quarantine listing", read)

    def quarantine_item(self, item_id: int) -> QuarantineItem | None:
        """One item with its raw bytes."""

        def read(cur):
            row = cur.execute(QUARANTINE_ITEM_SQL, {"id": item_id}).fetchone()
            return None if row is None else QuarantineItem(*row[:-1], raw=bytes(row[-1]))

        return self._run(f"quarantine item {item_id}", read)

    def requeue(self, source: str, *, epoch: int, cursor: int, item_id: int, events: list[Event],
                note: str) -> CommitResult:
        """Store events read again from a quarantined item and mark the item requeued, in ONE transaction
        fenced like a page commit (epoch and cursor), the cursor unchanged. Refused (StateConflict) if the item
        is gone, already requeued, of another source, or any of the events is stored already."""

        def commit(cur):
            if cur.execute(HOLD_FENCE_SQL, {"source": source, "epoch": epoch, "cursor": cursor}).rowcount != 1:
                raise Fenced(f"source {source!r}: requeue refused by the fence (epoch {epoch}, cursor {cursor}): "
                             "another consumer took this source over")
            row = cur.execute(LOCK_QUARANTINE_ITEM_SQL, {"id": item_id}).fetchone()
            if row is None or row[0] != source:
                raise StateConflict(f"quarantine item {item_id} of source {source!r} does not exist; nothing done")
            if row[1] == "requeued":
                raise StateConflict(f"quarantine item {item_id} was requeued already; nothing done")
            stored = [r[0] for r in cur.execute(STORED_IDS_SQL, {"source": source,
                                                                  "ids": [e.id for e in events]}).fetchall()]
            if stored:
                raise StateConflict(f"source {source!r} already stores event {', '.join(map(str, stored))}; nothing "
                                    "done (discard the item if the stored event is the right one)")
            result = self._store_page(cur, source, events, (), at_cursor=None)
            cur.execute(RESOLVE_QUARANTINE_SQL, {"id": item_id, "resolution": "requeued", "note": note})
            return result

        return self._run(f"requeue for {source!r}", commit)

    def discard(self, item_id: int, note: str) -> QuarantineItem:
        """Mark an open item discarded (its bytes are kept; it no longer counts as open). StateConflict if it
        does not exist or is not open."""

        def mark(cur):
            row = cur.execute(LOCK_QUARANTINE_ITEM_SQL, {"id": item_id}).fetchone()
            if row is None:
                raise StateConflict(f"quarantine item {item_id} does not exist; nothing done")
            if row[1] is not None:
                raise StateConflict(f"quarantine item {item_id} is {row[1]} already; nothing done")
            cur.execute(RESOLVE_QUARANTINE_SQL, {"id": item_id, "resolution": "discarded", "note": note})

        self._run(f"discard of quarantine item {item_id}", mark)
        return self.quarantine_item(item_id)

    def stuck(self, source: str, *, after_s: float = STUCK_AFTER_S) -> Stuck | None:
        """The item that holds ``source`` at its cursor, if one does (see STUCK_SQL)."""

        def read(cur):
            row = cur.execute(STUCK_SQL, {"source": source, "stops_before": STOPS_BEFORE_REASON,
                                          "malformed": MALFORMED_BODY_REASON, "sightings": STUCK_SIGHTINGS,
                                          "after_s": after_s}).fetchone()
            return None if row is None else Stuck(*row)

        return self._run(f"stuck query for {source!r}", read)

    def source_activity(self) -> list[SourceActivity]:
        return self._run("source listing",
                         lambda cur: [SourceActivity(*r) for r in cur.execute(SOURCE_ACTIVITY_SQL).fetchall()])


def _split_page(events: list[Event], highest_stored: int | None) -> tuple[list[Event], list[Event]]:
    """(events that cannot be stored yet, events that may be): the first go in by COPY.

    Only ids above the highest stored id are safe for COPY, and only if the page holds each id once
    (a second copy of an id would collide with the first inside the COPY)."""
    if highest_stored is None:
        highest_stored = 0
    fresh = [e for e in events if e.id > highest_stored]
    if len({e.id for e in fresh}) != len(fresh):
        return [], list(events)
    if len(fresh) == len(events):
        return fresh, []
    return fresh, [e for e in events if e.id <= highest_stored]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
