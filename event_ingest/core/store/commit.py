"""The commit path: the epoch bump, the fenced page commit, poll marks and the request counters.

Fence timeline it defends against:

1. A holds the lease with epoch 7, fetches a page, then pauses past its lease.
2. B takes the lease: ``begin()`` bumps the epoch to 8 and reads the cursor.
3. A wakes and commits: its cursor UPDATE says ``WHERE epoch = 7`` and matches
   nothing, so the whole transaction (events included) is rolled back and A
   stops. Events and cursor are one transaction, so they never disagree.

The cursor UPDATE runs first in the transaction: it row-locks the source's
state, so two committers of one source queue up, and the second re-checks the
epoch after the first commits (READ COMMITTED re-evaluates the WHERE).

A small page (a tailing drain's few new events) is ONE statement: the fence's UPDATE in a CTE, and the
INSERT of the page's events guarded by it (``WHERE EXISTS (fence)``), in one implicit transaction - one
round trip instead of BEGIN, UPDATE, SELECT, COPY and COMMIT. The fence is the same: the UPDATE takes
the row lock, re-checks epoch and cursor after any writer it queued behind, and a refused fence inserts
nothing; ``ON CONFLICT DO NOTHING`` decides what is stored already (it sees committed rows whatever the
statement's snapshot).

Large pages - commits near COPY speed: once the fence holds the row lock, the page's ids
above the highest stored id of the source cannot collide with a stored event
(every writer of the source queues on that lock), so they go in by ``COPY``.
Ids at or below it - a source re-sending, or a replay after the cursor was
rewound over stored events - take ``INSERT ... ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..page import Event, Quarantined
from .connections import Connections, Cursor, Fenced, StoreError, one_row

# Open the drain's epoch: every earlier holder's commits are refused from now on.
BEGIN_EPOCH_SQL = """
UPDATE source_state SET epoch = epoch + 1
WHERE source = %(source)s
RETURNING epoch, cursor
"""

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

# A small page, fenced, in one statement. Returns (fence matched: 0/1, events inserted).
COMMIT_SMALL_PAGE_SQL = f"""
WITH fence AS (
    UPDATE source_state
    SET cursor = %(new_cursor)s, last_ingest_at = now(), last_poll_at = now(), {_COUNT_REQUESTS}
    WHERE source = %(source)s AND epoch = %(epoch)s AND cursor = %(old_cursor)s
    RETURNING 1
), stored AS (
    INSERT INTO events (source, event_id, payload)
    SELECT %(source)s, u.event_id, u.payload::jsonb
    FROM unnest(%(ids)s::bigint[], %(payloads)s::text[]) AS u(event_id, payload)
    WHERE EXISTS (SELECT 1 FROM fence)
    ON CONFLICT (source, event_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM fence), (SELECT count(*) FROM stored)
"""
# Pages up to this many events (and no quarantined item) take the one statement; larger ones COPY.
ONE_STATEMENT_MAX_EVENTS = 64

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


@dataclass(frozen=True)
class CommitResult:
    inserted: int
    already_stored: int
    quarantined: int
    copied: int = 0  # of `inserted`, how many went in by COPY (ids above the highest stored id)


def quarantine_params(source: str, item: Quarantined, at_cursor: int | None = None) -> dict:
    digest = hashlib.sha256(item.raw + b"\0" + item.reason.encode()).hexdigest()
    return {
        "source": source,
        "event_id": item.event_id,
        "raw": item.raw,
        "reason": item.reason,
        "digest": digest,
        "at_cursor": at_cursor,
    }


def request_counts(requests: int, errors: int = 0) -> dict:
    return {"requests": requests, "errors": errors}


# A last_error is a line for an operator, not a log: long reasons are cut.
LAST_ERROR_CHARS = 500


class Commits:
    """The drain's writes, each one transaction on the pool it is given."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections

    def begin_epoch(self, source: str) -> tuple[int, int]:
        """Take the source over: bump its epoch; returns (epoch, cursor)."""

        def begin(cur):
            cur.execute(BEGIN_EPOCH_SQL, {"source": source})
            row = cur.fetchone()
            if row is None:
                raise StoreError(f"source {source!r} has no state row; run apply_schema() for it first")
            return int(row[0]), int(row[1])

        return self.connections.run_statement(f"epoch bump of {source!r}", begin)

    def commit_page(
        self,
        source: str,
        *,
        epoch: int,
        old_cursor: int,
        new_cursor: int,
        events: list[Event],
        quarantined: Sequence[Quarantined] = (),
        requests: int = 0,
    ) -> CommitResult:
        """Store one page and advance the cursor in ONE transaction, fenced by epoch and old cursor.
        ``requests``: sent since the drain's last write, counted in the same statement as the cursor."""

        if len(events) <= ONE_STATEMENT_MAX_EVENTS and not quarantined:
            return self._commit_small_page(
                source, epoch=epoch, old_cursor=old_cursor, new_cursor=new_cursor, events=events, requests=requests
            )

        def commit(cur):
            cur.execute(
                ADVANCE_CURSOR_SQL,
                {
                    "source": source,
                    "epoch": epoch,
                    "old_cursor": old_cursor,
                    "new_cursor": new_cursor,
                    **request_counts(requests),
                },
            )
            if cur.rowcount != 1:
                raise Fenced(
                    f"source {source!r}: commit refused by the fence (epoch {epoch}, cursor {old_cursor}): "
                    "another consumer took this source over"
                )
            return store_page(cur, source, events, quarantined, at_cursor=old_cursor)

        try:
            return self.connections.run(f"commit for {source!r}", commit)
        except Fenced:
            self.connections.run("fence count", lambda cur: cur.execute(COUNT_FENCED_SQL, {"source": source}))
            raise

    def _commit_small_page(
        self, source: str, *, epoch: int, old_cursor: int, new_cursor: int, events: list[Event], requests: int
    ) -> CommitResult:
        params = {
            "source": source,
            "epoch": epoch,
            "old_cursor": old_cursor,
            "new_cursor": new_cursor,
            "ids": [e.id for e in events],
            "payloads": [e.payload_json for e in events],
            **request_counts(requests),
        }
        fenced_in, inserted = self.connections.run_statement(
            f"commit for {source!r}", lambda cur: one_row(cur.execute(COMMIT_SMALL_PAGE_SQL, params))
        )
        if fenced_in != 1:
            self.connections.run("fence count", lambda cur: cur.execute(COUNT_FENCED_SQL, {"source": source}))
            raise Fenced(
                f"source {source!r}: commit refused by the fence (epoch {epoch}, cursor {old_cursor}): "
                "another consumer took this source over"
            )
        return CommitResult(inserted, len(events) - inserted, 0, 0)

    def mark_polled(self, source: str, epoch: int, requests: int = 0) -> bool:
        """Record that the holder of ``epoch`` just polled ``source`` and found nothing new (and ``requests``
        sent since its last write). False if the epoch is no longer current (nothing written)."""
        return self.connections.run_statement(
            f"poll mark for {source!r}",
            lambda cur: (
                cur.execute(MARK_POLLED_SQL, {"source": source, "epoch": epoch, **request_counts(requests)}).rowcount
                == 1
            ),
        )

    def record_failure(
        self,
        source: str,
        *,
        requests: int,
        error: str,
        bad_body: Quarantined | None = None,
        at_cursor: int | None = None,
    ) -> None:
        """A failed attempt, in one transaction: the counters (``requests`` sent since the last write, one of
        them failed), the reason as the source's last error, and the body kept if it was not a page."""

        def put(cur):
            cur.execute(
                RECORD_FAILURE_SQL, {"source": source, "error": error[:LAST_ERROR_CHARS], **request_counts(requests, 1)}
            )
            if bad_body is not None:
                cur.execute(INSERT_QUARANTINE_SQL, quarantine_params(source, bad_body, at_cursor))

        self.connections.run(f"failure record for {source!r}", put)

    def record_requests(self, source: str, requests: int) -> None:
        """Requests sent since the last write that counted them (a drain's last few, when it ends)."""
        self.connections.run_statement(
            f"request count for {source!r}",
            lambda cur: cur.execute(RECORD_REQUESTS_SQL, {"source": source, **request_counts(requests)}),
        )

    def quarantine(self, source: str, items: Iterable[Quarantined], at_cursor: int | None = None) -> None:
        """Keep bytes that could not be read as a page (outside any cursor move), served at ``at_cursor``."""
        items = list(items)

        def put(cur):
            for item in items:
                cur.execute(INSERT_QUARANTINE_SQL, quarantine_params(source, item, at_cursor))

        self.connections.run(f"quarantine for {source!r}", put)


def store_page(
    cur: Cursor, source: str, events: list[Event], quarantined: Iterable[Quarantined], at_cursor: int | None
) -> CommitResult:
    """The page's rows, inside a transaction that already holds the fence (the state row lock): a page
    commit's, and an operator's requeue's (operations.py)."""
    quarantined = list(quarantined)
    inserted = copied = 0
    if events:
        cur.execute(HIGHEST_STORED_ID_SQL, {"source": source})
        highest = one_row(cur)[0]
        fresh, maybe_stored = _split_page(events, highest)
        if fresh:
            with cur.copy(COPY_EVENTS_SQL) as copy:
                for event in fresh:
                    copy.write_row((source, event.id, event.payload_json))
            copied = len(fresh)
        if maybe_stored:
            cur.execute(
                INSERT_EVENTS_SQL,
                {
                    "source": source,
                    "ids": [e.id for e in maybe_stored],
                    "payloads": [e.payload_json for e in maybe_stored],
                },
            )
            inserted = cur.rowcount
        inserted += copied
    for item in quarantined:
        cur.execute(INSERT_QUARANTINE_SQL, quarantine_params(source, item, at_cursor))
    return CommitResult(inserted, len(events) - inserted, len(quarantined), copied)


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
