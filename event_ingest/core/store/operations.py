"""What operators do through the fence: replay (rewind the cursor), the quarantine's listing, requeue and
discard."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ..page import Event
from .commit import HOLD_FENCE_SQL, CommitResult, store_page
from .connections import Connections, Fenced, StateConflict

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


class Operations:
    """An operator's reads and fenced writes, on the pool it is given."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections

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
                raise StateConflict(
                    f"source {source!r}: --from-id {from_id} is above the cursor {cursor}; nothing "
                    "done (replay only moves the cursor back; `event-ingest skip` moves it on)"
                )
            epoch = cur.execute(REWIND_SQL, {"source": source, "from_id": from_id}).fetchone()[0]
            deleted = 0
            if delete_from is not None:
                deleted = cur.execute(DELETE_EVENTS_FROM_SQL, {"source": source, "delete_from": delete_from}).rowcount
            return cursor, int(epoch), deleted

        return self.connections.run(f"replay of {source!r}", rewind)

    def quarantine_items(
        self, source: str | None = None, *, include_resolved: bool = False, limit: int = 100
    ) -> tuple[list[QuarantineItem], int]:
        """The newest ``limit`` items (open ones unless ``include_resolved``) and how many there are in all."""

        def read(cur):
            params = {"source": source, "all": include_resolved, "limit": limit}
            items = [QuarantineItem(*r) for r in cur.execute(QUARANTINE_LIST_SQL, params).fetchall()]
            return items, int(cur.execute(QUARANTINE_COUNT_SQL, params).fetchone()[0])

        return self.connections.run("quarantine listing", read)

    def quarantine_item(self, item_id: int) -> QuarantineItem | None:
        """One item with its raw bytes."""

        def read(cur):
            row = cur.execute(QUARANTINE_ITEM_SQL, {"id": item_id}).fetchone()
            return None if row is None else _whole_item(row)

        return self.connections.run(f"quarantine item {item_id}", read)

    def requeue(
        self, source: str, *, epoch: int, cursor: int, item_id: int, events: list[Event], note: str
    ) -> CommitResult:
        """Store events read again from a quarantined item and mark the item requeued, in ONE transaction
        fenced like a page commit (epoch and cursor), the cursor unchanged. Refused (StateConflict) if the item
        is gone, already requeued, of another source, or any of the events is stored already."""

        def commit(cur):
            if cur.execute(HOLD_FENCE_SQL, {"source": source, "epoch": epoch, "cursor": cursor}).rowcount != 1:
                raise Fenced(
                    f"source {source!r}: requeue refused by the fence (epoch {epoch}, cursor {cursor}): "
                    "another consumer took this source over"
                )
            row = cur.execute(LOCK_QUARANTINE_ITEM_SQL, {"id": item_id}).fetchone()
            if row is None or row[0] != source:
                raise StateConflict(f"quarantine item {item_id} of source {source!r} does not exist; nothing done")
            if row[1] == "requeued":
                raise StateConflict(f"quarantine item {item_id} was requeued already; nothing done")
            stored = [
                r[0] for r in cur.execute(STORED_IDS_SQL, {"source": source, "ids": [e.id for e in events]}).fetchall()
            ]
            if stored:
                raise StateConflict(
                    f"source {source!r} already stores event {', '.join(map(str, stored))}; nothing "
                    "done (discard the item if the stored event is the right one)"
                )
            result = store_page(cur, source, events, (), at_cursor=None)
            cur.execute(RESOLVE_QUARANTINE_SQL, {"id": item_id, "resolution": "requeued", "note": note})
            return result

        return self.connections.run(f"requeue for {source!r}", commit)

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
            return _whole_item(cur.execute(QUARANTINE_ITEM_SQL, {"id": item_id}).fetchone())  # as marked

        return self.connections.run(f"discard of quarantine item {item_id}", mark)


def _whole_item(row: tuple[Any, ...]) -> QuarantineItem:
    """An item read by QUARANTINE_ITEM_SQL: the listing's columns, then the raw bytes."""
    return replace(QuarantineItem(*row[:-1]), raw=bytes(row[-1]))
