"""The counter audit: counters that disagree with the rows are found, and a recount repairs them.

The counters (``id_blocks``, ``events_per_minute``) are kept by statement triggers, in the transaction
that writes the rows, so every write that goes through the triggers keeps them true. A write that
bypasses them does not, and the gap check, which adds counters instead of reading rows, is then wrong:

1. An operator deletes event 70,050 with ``SET session_replication_role = replica`` (so do
   ``pg_restore --disable-triggers`` and a logical replica applying changes).
2. ``id_blocks`` still counts every id of block 1 (ids 65,536 to 131,071) as stored.
3. The gap check adds the counters, finds the span full, and passes with a real gap.

``verify_counters`` recounts a few blocks per call from the rows (an index count of at most 65,536
ids per block) and compares each with its counter, in one statement: one snapshot, so a commit landing
meanwhile is in both or in neither. It resumes where the last call stopped; the position is kept in
Postgres (``counter_audit``), so any process on any schedule continues the same round. Blocks found
wrong are recorded there; the gap check reads them in its snapshot and fails, naming them, until
``recount`` rebuilds the source's counters from its rows.

The bound: a call verifies ``blocks`` blocks (COUNTER_BLOCKS_PER_CALL, 16, unless the caller says
otherwise), wrapping from the highest block to the lowest, so the calls go round a source's B blocks
(those holding a row or a counter; a dense source of n ids has n / 65,536) and verify every one of
them in any ceil(B / blocks) consecutive calls. Drift is therefore found by the ceil(B / blocks)-th
call that starts after it was made: at 30 million dense ids, 458 blocks, 29 calls; with the audit
every 10 minutes, within 4 h 50 min. The per-minute counters are written by the same trigger
statements as ``id_blocks`` and are rebuilt by the same recount, but are not verified on their own
(that would read every row of the last hour).

The recount takes the source's partition in SHARE mode, so no commit of the source lands while the
counters are rebuilt (commits wait for it: O(rows of the source)), and clears the recorded drift in
the same transaction. The audit holds its row of ``counter_audit`` while it counts, so a drift it
found before a recount is never recorded after it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from psycopg import sql

from .connections import Connections, Cursor
from .records import BlockDrift
from .schema import ID_BLOCK_BITS, RECOUNT_SQL, partition_name

COUNTER_BLOCKS_PER_CALL = 16  # blocks recounted per call: at most 16 x 65,536 ids, by index

# The lowest and highest block a bigint id can fall in (event_id >> 16).
FIRST_BLOCK = -(1 << (63 - ID_BLOCK_BITS))
LAST_BLOCK = (1 << (63 - ID_BLOCK_BITS)) - 1

# The audit's row of a source, made on first use, then locked for the call: two audits of one source
# take turns, and a recount (which clears the drift) never interleaves with an audit's write of it.
ENSURE_AUDIT_SQL = "INSERT INTO counter_audit (source) VALUES (%(source)s) ON CONFLICT (source) DO NOTHING"
LOCK_AUDIT_SQL = "SELECT next_block, drift FROM counter_audit WHERE source = %(source)s FOR UPDATE"

# The next `blocks` blocks in [from_block, to_block] that hold a counter or a row (two index probes per
# block found, so empty stretches of ids cost nothing), each with its counter and its rows counted.
# (to_block is at most LAST_BLOCK, so `c.block + 1` never overflows.)
# One statement, one snapshot: a commit is in the counter and the rows alike, or in neither.
VERIFY_BLOCKS_SQL = f"""
WITH RECURSIVE chosen(block, n) AS (
    SELECT least(
        (SELECT min(b.block) FROM id_blocks b WHERE b.source = %(source)s AND b.block >= %(from_block)s),
        (SELECT min(e.event_id) FROM events e
         WHERE e.source = %(source)s AND e.event_id >= %(from_block)s::bigint << {ID_BLOCK_BITS}) >> {ID_BLOCK_BITS}
    ), 1
    UNION ALL
    SELECT least(
        (SELECT min(b.block) FROM id_blocks b WHERE b.source = %(source)s AND b.block > c.block),
        (SELECT min(e.event_id) FROM events e
         WHERE e.source = %(source)s AND e.event_id >= (c.block + 1) << {ID_BLOCK_BITS}) >> {ID_BLOCK_BITS}
    ), c.n + 1
    FROM chosen c
    WHERE c.block IS NOT NULL AND c.n < %(blocks)s AND c.block < %(to_block)s
)
SELECT c.block, coalesce(b.events, 0),
       (SELECT count(*) FROM events e WHERE e.source = %(source)s
        AND e.event_id BETWEEN c.block << {ID_BLOCK_BITS} AND (c.block << {ID_BLOCK_BITS}) + {(1 << ID_BLOCK_BITS) - 1})
FROM chosen c
LEFT JOIN id_blocks b ON b.source = %(source)s AND b.block = c.block
WHERE c.block IS NOT NULL AND c.block <= %(to_block)s
ORDER BY c.block
"""

SAVE_AUDIT_SQL = """
UPDATE counter_audit
SET next_block = %(next_block)s, verified_at = now(),
    pass_completed_at = CASE WHEN %(wrapped)s THEN now() ELSE pass_completed_at END,
    drift = %(drift)s::jsonb,
    drift_found_at = CASE WHEN %(found)s THEN now() WHEN %(drift)s::jsonb = '[]'::jsonb THEN NULL
                          ELSE drift_found_at END
WHERE source = %(source)s
"""

# The repair's partition lock: writers of the source wait (their inserts take ROW EXCLUSIVE), so the
# rows counted are the rows there when the counters are written.
LOCK_PARTITION_SQL = "LOCK TABLE {} IN SHARE MODE"
BLOCK_COUNTS_SQL = "SELECT block, events FROM id_blocks WHERE source = %(source)s"
CLEAR_DRIFT_SQL = """
INSERT INTO counter_audit (source) VALUES (%(source)s)
ON CONFLICT (source) DO UPDATE SET drift = '[]'::jsonb, drift_found_at = NULL
"""


@dataclass(frozen=True)
class CounterAudit:
    """One call of the audit on one source."""

    source: str
    checked: tuple[int, ...]  # blocks verified, in the order verified
    drifted: tuple[BlockDrift, ...]  # of them, those whose counter disagrees with the rows
    drift: tuple[BlockDrift, ...]  # every block on record as wrong after this call (drifted, and earlier finds)
    next_block: int  # where the next call resumes
    wrapped: bool  # this call went past the highest block and on from the lowest

    def summary(self) -> str:
        if not self.drift:
            return f"source {self.source}: counters agree with the rows in the {len(self.checked)} blocks verified"
        return f"source {self.source}: {drift_summary(self.source, self.drift)}"


@dataclass(frozen=True)
class Recount:
    source: str
    changed: tuple[BlockDrift, ...]  # blocks whose counter changed: `counted` before, `rows` after
    events_before: int
    events_after: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self.changed:
            return (
                f"source {self.source}: counters rebuilt from the rows; they already agreed "
                f"({self.events_after} events)"
            )
        shown = ", ".join(f"block {b.block}: {b.counted} -> {b.rows}" for b in self.changed[:10])
        more = f" and {len(self.changed) - 10} more" if len(self.changed) > 10 else ""
        return (
            f"source {self.source}: counters rebuilt from the rows; {len(self.changed)} blocks corrected "
            f"({shown}{more}); events {self.events_before} -> {self.events_after}"
        )


def drift_summary(source: str, drift: tuple[BlockDrift, ...], shown: int = 5) -> str:
    """What a check says about drift on record: which blocks, and the command that repairs it."""
    named = ", ".join(f"{b.block} (ids {b.first_id}-{b.last_id}: counted {b.counted}, rows {b.rows})" for b in drift)
    if len(drift) > shown:
        named = ", ".join(
            f"{b.block} (ids {b.first_id}-{b.last_id}: counted {b.counted}, rows {b.rows})" for b in drift[:shown]
        )
        named += f" and {len(drift) - shown} more"
    return f"counters disagree with the rows in blocks {named}; run `event-ingest recount {source}`"


def _drift_json(drift: list[BlockDrift]) -> str:
    return json.dumps([{"block": b.block, "counted": b.counted, "rows": b.rows} for b in drift])


class Audit:
    """The counter audit and the recount, on the pool it is given."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections

    def verify_counters(self, source: str, *, blocks: int = COUNTER_BLOCKS_PER_CALL) -> CounterAudit:
        """Recount the next ``blocks`` blocks of ``source`` from its rows, record those whose counter
        disagrees, and move the audit's position on (wrapping round)."""
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {blocks}")

        def verify(cur):
            cur.execute(ENSURE_AUDIT_SQL, {"source": source})
            start, on_record = cur.execute(LOCK_AUDIT_SQL, {"source": source}).fetchone()
            start = FIRST_BLOCK if start is None else int(start)
            found = _verify_blocks(cur, source, start, LAST_BLOCK, blocks)
            wrapped = len(found) < blocks
            if wrapped:
                # Past the highest block: go on from the lowest, up to where this call began.
                below = (
                    _verify_blocks(cur, source, FIRST_BLOCK, start - 1, blocks - len(found))
                    if (start > FIRST_BLOCK)
                    else []
                )
                found += below
                next_block = below[-1].block + 1 if below else FIRST_BLOCK
            else:
                next_block = found[-1].block + 1
            if next_block > LAST_BLOCK:
                next_block = FIRST_BLOCK
            checked = tuple(b.block for b in found)
            drifted = tuple(b for b in found if b.counted != b.rows)
            # Blocks verified now replace what was on record for them; the rest of the record stands.
            kept = [BlockDrift(int(d["block"]), int(d["counted"]), int(d["rows"])) for d in on_record]
            drift = sorted([d for d in kept if d.block not in set(checked)] + list(drifted), key=lambda d: d.block)
            cur.execute(
                SAVE_AUDIT_SQL,
                {
                    "source": source,
                    "next_block": next_block,
                    "wrapped": wrapped,
                    "drift": _drift_json(drift),
                    "found": bool(drifted),
                },
            )
            return CounterAudit(source, checked, drifted, tuple(drift), next_block, wrapped)

        return self.connections.run(f"counter audit of {source!r}", verify)

    def recount(self, source: str) -> Recount:
        """Rebuild a source's counters from its rows (O(rows); commits of the source wait meanwhile) and
        clear the drift on record. Only needed after writes that bypass the triggers:
        session_replication_role = replica, DISABLE TRIGGER, a partition dropped or detached."""

        def recount(cur):
            cur.execute(sql.SQL(LOCK_PARTITION_SQL).format(sql.Identifier(partition_name(source))))
            before = dict(cur.execute(BLOCK_COUNTS_SQL, {"source": source}).fetchall())
            for statement in RECOUNT_SQL:
                cur.execute(statement, {"source": source})
            after = dict(cur.execute(BLOCK_COUNTS_SQL, {"source": source}).fetchall())
            cur.execute(CLEAR_DRIFT_SQL, {"source": source})
            changed = tuple(
                BlockDrift(int(b), int(before.get(b, 0)), int(after.get(b, 0)))
                for b in sorted(set(before) | set(after))
                if before.get(b, 0) != after.get(b, 0)
            )
            return Recount(source, changed, int(sum(before.values())), int(sum(after.values())))

        return self.connections.run(f"recount of {source!r}", recount)


def _verify_blocks(cur: Cursor, source: str, first: int, last: int, blocks: int) -> list[BlockDrift]:
    rows = cur.execute(
        VERIFY_BLOCKS_SQL, {"source": source, "from_block": first, "to_block": last, "blocks": blocks}
    ).fetchall()
    return [BlockDrift(int(block), int(counted), int(stored)) for block, counted, stored in rows]
