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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import psycopg
from psycopg import sql

from ..config import is_valid_source_name, redact_url
from .page import Event, Quarantined

# Serialises schema changes across processes (any constant works; this is "event-ingest").
SCHEMA_LOCK_KEY = 0x6576656E74696E

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

-- Added after the first release: upgrade databases made before it.
ALTER TABLE source_state ADD COLUMN IF NOT EXISTS last_poll_at timestamptz;

-- Written by the Dagster asset events_per_minute (a pandas rollup of ingested_at).
CREATE TABLE IF NOT EXISTS events_per_minute (
    source   text        NOT NULL,
    minute   timestamptz NOT NULL,
    events   bigint      NOT NULL,
    PRIMARY KEY (source, minute)
);
"""

# Open the drain's epoch: every earlier holder's commits are refused from now on.
BEGIN_EPOCH_SQL = """
UPDATE source_state SET epoch = epoch + 1
WHERE source = %(source)s
RETURNING epoch, cursor
"""

ENSURE_STATE_SQL = "INSERT INTO source_state (source) VALUES (%(source)s) ON CONFLICT (source) DO NOTHING"

# The fence: matches only if nobody took the source over and the cursor is where we left it.
ADVANCE_CURSOR_SQL = """
UPDATE source_state
SET cursor = %(new_cursor)s, last_ingest_at = now(), last_poll_at = now()
WHERE source = %(source)s AND epoch = %(epoch)s AND cursor = %(old_cursor)s
"""

# A tailing drain of an idle source says it is still polling (freshness sees it), fenced like a commit.
MARK_POLLED_SQL = "UPDATE source_state SET last_poll_at = now() WHERE source = %(source)s AND epoch = %(epoch)s"

COUNT_FENCED_SQL = "UPDATE source_state SET fenced_commits = fenced_commits + 1 WHERE source = %(source)s"

INSERT_EVENTS_SQL = """
INSERT INTO events (source, event_id, payload)
SELECT %(source)s, u.event_id, u.payload::jsonb
FROM unnest(%(ids)s::bigint[], %(payloads)s::text[]) AS u(event_id, payload)
ON CONFLICT (source, event_id) DO NOTHING
"""

# The same bad bytes seen again (a source serving one broken page to every retry)
# are counted, not copied.
INSERT_QUARANTINE_SQL = """
INSERT INTO quarantine (source, event_id, raw, reason, digest)
VALUES (%(source)s, %(event_id)s, %(raw)s, %(reason)s, %(digest)s)
ON CONFLICT (source, digest) DO UPDATE
SET seen_count = quarantine.seen_count + 1, last_seen_at = now()
"""

# Missing ids between the smallest and the largest accounted-for id of a source.
# An id is accounted for if it is stored, or quarantined with its id.
GAPS_SQL = """
WITH ids AS (
    SELECT event_id FROM events WHERE source = %(source)s
    UNION
    SELECT event_id FROM quarantine WHERE source = %(source)s AND event_id IS NOT NULL
), ordered AS (
    SELECT event_id, lag(event_id) OVER (ORDER BY event_id) AS previous FROM ids
)
SELECT previous + 1 AS first_missing, event_id - 1 AS last_missing
FROM ordered
WHERE event_id - previous > 1
ORDER BY first_missing
LIMIT %(limit)s
"""

RECENT_INGEST_TIMES_SQL = """
SELECT ingested_at FROM events
WHERE source = %(source)s AND ingested_at >= now() - make_interval(hours => %(hours)s)
"""

UPSERT_ROLLUP_SQL = """
INSERT INTO events_per_minute (source, minute, events) VALUES (%s, %s, %s)
ON CONFLICT (source, minute) DO UPDATE SET events = excluded.events
"""

STATUS_SQL = """
SELECT s.source, s.cursor, s.epoch, s.last_ingest_at, s.fenced_commits, s.last_poll_at,
       (SELECT count(*) FROM events e WHERE e.source = s.source) AS events,
       (SELECT coalesce(max(event_id), 0) FROM events e WHERE e.source = s.source) AS max_event_id,
       (SELECT count(*) FROM quarantine q WHERE q.source = s.source) AS quarantined
FROM source_state s
WHERE %(source)s::text IS NULL OR s.source = %(source)s
ORDER BY s.source
"""

# Seconds since the source was last polled successfully, on the database's clock (one clock for all).
POLL_AGE_SQL = """
SELECT extract(epoch FROM now() - greatest(last_ingest_at, last_poll_at))::float8
FROM source_state WHERE source = %(source)s
"""

ROW_COUNTS_SQL = "SELECT source, events_stored FROM source_state WHERE source = ANY(%(sources)s)"

# What the quarantine holds for one source: how many, the newest reason, the highest id kept.
QUARANTINE_SUMMARY_SQL = """
SELECT count(*),
       (SELECT reason FROM quarantine WHERE source = %(source)s ORDER BY last_seen_at DESC LIMIT 1),
       coalesce(max(event_id), 0)
FROM quarantine WHERE source = %(source)s
"""


class StoreError(RuntimeError):
    """Postgres could not be reached or refused a statement."""


class Fenced(RuntimeError):
    """Another holder took the source over: this commit was rolled back."""


@dataclass(frozen=True)
class CommitResult:
    inserted: int
    already_stored: int
    quarantined: int


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


@dataclass(frozen=True)
class Gap:
    first_missing: int
    last_missing: int

    @property
    def size(self) -> int:
        return self.last_missing - self.first_missing + 1


def partition_name(source: str) -> str:
    """Name of the events partition of a source, within Postgres' 63-byte identifiers."""
    if not is_valid_source_name(source):
        raise ValueError(f"invalid source name {source!r}")
    name = f"events_{source}"
    if len(name) > 63:
        # Truncation could make two long names collide: keep a digest of the whole name.
        name = f"events_{source[:40]}_{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    return name


def quarantine_params(source: str, item: Quarantined) -> dict:
    digest = hashlib.sha256(item.raw + b"\0" + item.reason.encode()).hexdigest()
    return {"source": source, "event_id": item.event_id, "raw": item.raw, "reason": item.reason, "digest": digest}


class Store:
    """One Postgres connection and the statements the ingest needs."""

    def __init__(self, url: str, *, application_name: str = "event-ingest", connect_timeout_s: int = 5) -> None:
        self.url = url
        try:
            self.conn = psycopg.connect(
                url, application_name=application_name, connect_timeout=connect_timeout_s, autocommit=False
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to Postgres at {redact_url(url)}: {_first_line(exc)}") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, what: str, fn):
        try:
            with self.conn.transaction():
                return fn(self.conn.cursor())
        except (Fenced, StoreError):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"Postgres {what} failed: {_first_line(exc)}") from exc

    def apply_schema(self, sources: Iterable[str] = ()) -> None:
        """Create tables and per-source partitions if missing; safe to run from many processes at once."""
        sources = list(sources)

        def apply(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            cur.execute(SCHEMA_SQL)
            for source in sources:
                self._ensure_source(cur, source)

        self._run("schema setup", apply)

    def _ensure_source(self, cur, source: str) -> None:
        cur.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES IN ({})").format(
                sql.Identifier(partition_name(source)), sql.Literal(source)
            )
        )
        cur.execute(ENSURE_STATE_SQL, {"source": source})

    def ensure_source(self, source: str) -> None:
        def ensure(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            self._ensure_source(cur, source)

        self._run(f"setup of source {source!r}", ensure)

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
    ) -> CommitResult:
        """Store one page and advance the cursor in ONE transaction, fenced by epoch and old cursor."""

        def commit(cur):
            cur.execute(
                ADVANCE_CURSOR_SQL,
                {"source": source, "epoch": epoch, "old_cursor": old_cursor, "new_cursor": new_cursor},
            )
            if cur.rowcount != 1:
                raise Fenced(
                    f"source {source!r}: commit refused by the fence (epoch {epoch}, cursor {old_cursor}): "
                    "another consumer took this source over"
                )
            inserted = 0
            if events:
                cur.execute(
                    INSERT_EVENTS_SQL,
                    {"source": source, "ids": [e.id for e in events], "payloads": [e.payload_json for e in events]},
                )
                inserted = cur.rowcount
                cur.execute(
                    "UPDATE source_state SET events_stored = events_stored + %s WHERE source = %s",
                    (inserted, source),
                )
            for item in quarantined:
                cur.execute(INSERT_QUARANTINE_SQL, quarantine_params(source, item))
            return CommitResult(inserted, len(events) - inserted, len(quarantined))

        try:
            return self._run(f"commit for {source!r}", commit)
        except Fenced:
            self._run("fence count", lambda cur: cur.execute(COUNT_FENCED_SQL, {"source": source}))
            raise

    def mark_polled(self, source: str, epoch: int) -> bool:
        """Record that the holder of ``epoch`` just polled ``source`` and found nothing new.
        False if the epoch is no longer current (nothing written)."""
        return self._run(f"poll mark for {source!r}",
                         lambda cur: cur.execute(MARK_POLLED_SQL, {"source": source, "epoch": epoch}).rowcount == 1)

    def quarantine(self, source: str, items: Iterable[Quarantined]) -> None:
        """Keep bytes that could not be read as a page (outside any cursor move)."""
        items = list(items)

        def put(cur):
            for item in items:
                cur.execute(INSERT_QUARANTINE_SQL, quarantine_params(source, item))

        self._run(f"quarantine for {source!r}", put)

    def status(self, source: str | None = None) -> list[SourceStatus]:
        """Per-source state and counts: every source, or only ``source``."""

        def read(cur):
            cur.execute(STATUS_SQL, {"source": source})
            return [
                SourceStatus(
                    source=r[0], cursor=r[1], epoch=r[2], last_ingest_at=r[3], fenced_commits=r[4],
                    last_poll_at=r[5], events=r[6], max_event_id=r[7], quarantined=r[8],
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
        """Rows stored per source, from the counter kept in the fenced commit (no count(*))."""

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

    def gaps(self, source: str, limit: int = 100) -> list[Gap]:
        """Missing id ranges between the lowest and the highest accounted-for id.

        Sources need not start at 1, so ids below the first one seen are not called missing.
        """

        def read(cur):
            cur.execute(GAPS_SQL, {"source": source, "limit": limit})
            return [Gap(int(a), int(b)) for a, b in cur.fetchall()]

        return self._run(f"gap query for {source!r}", read)

    def recent_ingest_times(self, source: str, hours: int = 1) -> list[datetime]:
        def read(cur):
            cur.execute(RECENT_INGEST_TIMES_SQL, {"source": source, "hours": hours})
            return [r[0] for r in cur.fetchall()]

        return self._run(f"ingest times of {source!r}", read)

    def save_rollup(self, source: str, rows: list[tuple[datetime, int]]) -> None:
        """Upsert (minute, events) rows of events_per_minute for one source."""
        self._run(f"rollup of {source!r}",
                  lambda cur: cur.executemany(UPSERT_ROLLUP_SQL, [(source, m, n) for m, n in rows]))

    def event_ids(self, source: str) -> list[int]:
        def read(cur):
            cur.execute("SELECT event_id FROM events WHERE source = %s ORDER BY event_id", (source,))
            return [r[0] for r in cur.fetchall()]

        return self._run(f"id listing for {source!r}", read)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
