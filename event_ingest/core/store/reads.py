"""What the store reads: per-source status, the id counters the checks answer from, gaps, the rollup.

Every figure comes from counters and indexes (``id_blocks``, ``events_per_minute``, ``source_state``),
so a read costs the same at any table size; only ``gaps_between`` and ``event_ids`` read rows.

Each read on a ``Store`` is its own transaction. A caller that compares two reads takes them from one
``snapshot()`` instead, or a commit can land between them and make the comparison say what was never
true. The timeline it closes:

1. A check reads the span of a source's ids: 1 to 30.
2. A drain commits id 31 (the row and its counter, in one transaction).
3. The check reads the counters: 31 ids in a span of 30. A block holds more ids than it can, so a
   clean source is reported failing; or, where one id is really missing, 30 ids accounted for in a span
   of 30 hides the gap.

In one REPEATABLE READ transaction every read sees the same commits: the drain's commit is wholly
before or wholly after the check. ``Reads`` runs its statements on a ``Runner``: the pool, where each read
is its own transaction, or one open snapshot (``Connections.snapshot``, which opens it with SNAPSHOT_SQL).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime

from .connections import Runner
from .records import BlockDrift, CounterDrift, Gap, IdSpan, SourceActivity, SourceStatus, Stuck
from .schema import ID_BLOCK_BITS

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
       (SELECT coalesce(sum(b.events), 0) FROM id_blocks b WHERE b.source = s.source)::bigint AS events,
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


# Every named source's poll age and last poll (epoch seconds), both on the database's clock (one clock for all),
# in one statement;
# a source never polled (no row, or no poll yet) reads NULL, NULL.
POLL_AGES_SQL = """
SELECT n.source,
       extract(epoch FROM now() - greatest(s.last_ingest_at, s.last_poll_at))::float8,
       extract(epoch FROM greatest(s.last_ingest_at, s.last_poll_at))::float8
FROM unnest(%(sources)s::text[]) AS n(source) LEFT JOIN source_state s ON s.source = n.source
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

# Every source with state and when it was last active (renames and removals are judged from this).
SOURCE_ACTIVITY_SQL = """
SELECT source, created_at, greatest(last_ingest_at, last_poll_at, created_at) FROM source_state ORDER BY source
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
# The reasons page.py and client.py give those items (matched as LIKE patterns; the drain matches the phrase).
STOPS_BEFORE_PHRASE = "nor can its id, so the cursor stops before it"
STOPS_BEFORE_REASON = f"%{STOPS_BEFORE_PHRASE}%"
MALFORMED_BODY_REASON = "malformed page at lastId=%"
STUCK_SIGHTINGS = 2
STUCK_AFTER_S = 60.0

# What the counter audit (audit.py) last found wrong in a source's counters, until a recount clears it.
COUNTER_DRIFT_SQL = """
SELECT drift, drift_found_at FROM counter_audit WHERE source = %(source)s AND drift <> '[]'::jsonb
"""


class Reads:
    """Reads of state, counters and rows, and the rollup's upsert of per-minute counts, run by ``runner``.

    Over the pool (``Connections``) each read is one transaction; on the ``Reads`` that ``snapshot()``
    yields, every read is part of that snapshot's one transaction."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Reads]:
        """One REPEATABLE READ, READ ONLY transaction for reads that are compared with each other (a snapshot's
        own reads are one already)."""
        with self.runner.snapshot() as runner:
            yield self if runner is self.runner else Reads(runner)

    def status(self, source: str | None = None) -> list[SourceStatus]:
        """Per-source state and counts: every source, or only ``source``."""

        def read(cur):
            cur.execute(STATUS_SQL, {"source": source})
            # The query names its columns as SourceStatus names its fields.
            names = [column.name for column in cur.description]
            return [SourceStatus(**dict(zip(names, r))) for r in cur.fetchall()]

        return self.runner.run("status query", read)

    def poll_age_s(self, source: str) -> float | None:
        """Seconds since the last page was committed or the last poll found nothing new; None if never."""
        polled = self.poll_ages([source]).get(source)
        return None if polled is None else polled[0]

    def poll_ages(self, sources: list[str]) -> dict[str, tuple[float, float] | None]:
        """For each source: (seconds since its last successful poll, that poll's time in epoch seconds),
        None if never polled; one statement for all (a watch over many sources reads them at once)."""

        def read(cur):
            cur.execute(POLL_AGES_SQL, {"sources": list(sources)})
            return {name: None if age is None else (float(age), float(at)) for name, age, at in cur.fetchall()}

        return self.runner.run("poll ages", read)

    def row_counts(self, sources: list[str]) -> dict[str, int]:
        """Rows stored per source, from the counters the triggers keep (no count(*))."""

        def read(cur):
            cur.execute(ROW_COUNTS_SQL, {"sources": list(sources)})
            return {name: int(n) for name, n in cur.fetchall()}

        return self.runner.run("row counts", read)

    def source_status(self, source: str) -> SourceStatus | None:
        return next(iter(self.status(source)), None)

    def quarantine_summary(self, source: str) -> tuple[int, str | None, int]:
        """(items quarantined, the newest reason, the highest event id among them or 0)."""

        def read(cur):
            cur.execute(QUARANTINE_SUMMARY_SQL, {"source": source})
            count, reason, max_id = cur.fetchone()
            return int(count), reason, int(max_id)

        return self.runner.run(f"quarantine summary for {source!r}", read)

    def id_span(self, source: str) -> IdSpan:
        """Lowest and highest stored and quarantined ids (index probes, not scans)."""

        def read(cur):
            cur.execute(ID_SPAN_SQL, {"source": source})
            return IdSpan(*cur.fetchone())

        return self.runner.run(f"id span of {source!r}", read)

    def accounted_blocks(self, source: str) -> list[tuple[int, int]]:
        """(block, ids accounted for in it), ascending; a block holds ids [block << 16, (block + 1) << 16)."""

        def read(cur):
            cur.execute(ACCOUNTED_BLOCKS_SQL, {"source": source})
            return [(int(b), int(n)) for b, n in cur.fetchall()]

        return self.runner.run(f"id blocks of {source!r}", read)

    def gaps_between(self, source: str, first: int, last: int, limit: int | None = None) -> list[Gap]:
        """Missing id ranges within [first, last]: ids neither stored nor quarantined with their id."""

        def read(cur):
            cur.execute(GAPS_SQL, {"source": source, "first": first, "last": last, "limit": limit})
            return [Gap(int(a), int(b)) for a, b in cur.fetchall()]

        return self.runner.run(f"gap query for {source!r}", read)

    def gaps(self, source: str, limit: int = 100) -> list[Gap]:
        """Missing id ranges between the lowest and the highest accounted-for id, reading every id
        (core.checks.gap_check answers from the counters instead).

        Sources need not start at 1, so ids below the first one seen are not called missing.
        """
        with self.snapshot() as snap:
            span = snap.id_span(source)
            if span.lowest is None or span.highest is None:
                return []
            return snap.gaps_between(source, span.lowest, span.highest, limit)

    def recent_ingest_times(self, source: str, hours: int = 1) -> list[datetime]:
        def read(cur):
            cur.execute(RECENT_INGEST_TIMES_SQL, {"source": source, "hours": hours})
            return [r[0] for r in cur.fetchall()]

        return self.runner.run(f"ingest times of {source!r}", read)

    def recent_minutes(self, source: str, hours: int = 1) -> list[tuple[datetime, int]]:
        """(minute, events stored with that ingest minute) from the counters, oldest first."""

        def read(cur):
            cur.execute(RECENT_MINUTES_SQL, {"source": source, "hours": hours})
            return [(m, int(n)) for m, n in cur.fetchall()]

        return self.runner.run(f"per-minute counts of {source!r}", read)

    def save_rollup(self, source: str, rows: list[tuple[datetime, int]]) -> None:
        """Upsert (minute, events) rows of events_per_minute for one source. The counting triggers keep
        that table as rows are written; counts given here replace theirs for those minutes."""
        self.runner.run(
            f"rollup of {source!r}", lambda cur: cur.executemany(UPSERT_ROLLUP_SQL, [(source, m, n) for m, n in rows])
        )

    def event_ids(self, source: str) -> list[int]:
        def read(cur):
            cur.execute("SELECT event_id FROM events WHERE source = %s ORDER BY event_id", (source,))
            return [r[0] for r in cur.fetchall()]

        return self.runner.run(f"id listing for {source!r}", read)

    def source_activity(self) -> list[SourceActivity]:
        return self.runner.run(
            "source listing", lambda cur: [SourceActivity(*r) for r in cur.execute(SOURCE_ACTIVITY_SQL).fetchall()]
        )

    def stuck(self, source: str, *, after_s: float = STUCK_AFTER_S) -> Stuck | None:
        """The item that holds ``source`` at its cursor, if one does (see STUCK_SQL)."""

        def read(cur):
            row = cur.execute(
                STUCK_SQL,
                {
                    "source": source,
                    "stops_before": STOPS_BEFORE_REASON,
                    "malformed": MALFORMED_BODY_REASON,
                    "sightings": STUCK_SIGHTINGS,
                    "after_s": after_s,
                },
            ).fetchone()
            return None if row is None else Stuck(*row)

        return self.runner.run(f"stuck query for {source!r}", read)

    def counter_drift(self, source: str) -> CounterDrift | None:
        """Blocks the counter audit found disagreeing with the rows, and not recounted since (None: none)."""

        def read(cur):
            row = cur.execute(COUNTER_DRIFT_SQL, {"source": source}).fetchone()
            if row is None:
                return None
            drift, found_at = row
            blocks = tuple(BlockDrift(int(b["block"]), int(b["counted"]), int(b["rows"])) for b in drift)
            return CounterDrift(blocks, found_at)

        return self.runner.run(f"counter drift of {source!r}", read)
