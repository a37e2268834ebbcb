"""Replay: an operator rewinds a source's cursor, through the fence, so it is read again from an id.

One transaction: lock the source's state row, bump the epoch, set the cursor to N, and - only when asked
with ``delete_from`` - delete the stored events with ids at or above M. Nothing else is needed, because:

* A drain of the source may be running (an ``ingest`` run hosts it). The replay does not wait for its lease:
  its next commit (or poll mark) says ``WHERE epoch = mine`` and finds the epoch gone, so it is fenced and
  stores nothing; its host takes the source over again at once, reads the new cursor and fetches from N.
* A commit in flight at the moment of the replay holds the state row first or queues behind the replay's
  lock; either way it lands before the rewind or is fenced after it, never half of each.
* Events already stored are kept. Fetched again, ids at or below the highest stored id take the store's
  ``ON CONFLICT DO NOTHING`` path: nothing is stored twice.
* Deleting is separate and explicit, and in the same transaction as the cursor move, so the deleted ids are
  exactly those the next drain asks for again; the counting triggers keep the checks' counters true.

Refused, with nothing changed: N below 0, N above the cursor (replay moves the cursor back; ``skip`` moves
it on), a source with no state, and M at or below N - those events would be deleted and never fetched
again, since the next request asks for ids above N.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .page import MAX_EVENT_ID
from .store import StateConflict, Store


class ReplayRefused(ValueError):
    """The request makes no sense, or the state does not allow it: nothing was changed."""


@dataclass(frozen=True)
class ReplayResult:
    source: str
    cursor_before: int
    cursor_after: int
    epoch: int  # the new epoch: every holder of an older one is fenced
    delete_from: int | None
    deleted: int

    def summary(self) -> str:
        text = (
            f"source {self.source}: cursor rewound {self.cursor_before} -> {self.cursor_after} (epoch {self.epoch}); "
            f"the next drain fetches ids above {self.cursor_after}, events already stored are kept"
        )
        if self.delete_from is not None:
            text += f"; {self.deleted} events with ids >= {self.delete_from} deleted"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def check_request(source: str, from_id: int, delete_from: int | None) -> None:
    """The checks that need no database (the Dagster job and the CLI share them)."""
    if not 0 <= from_id <= MAX_EVENT_ID:
        raise ReplayRefused(
            f"source {source!r}: --from-id {from_id} is not a cursor (0 to {MAX_EVENT_ID}; the next "
            "request asks for ids above it); nothing done"
        )
    if delete_from is not None and not from_id < delete_from <= MAX_EVENT_ID:
        raise ReplayRefused(
            f"source {source!r}: --delete-from {delete_from} must be above --from-id {from_id} "
            f"(and at most {MAX_EVENT_ID}): events at or below {from_id} would be deleted and never "
            "fetched again; nothing done"
        )


def replay(store: Store, source: str, *, from_id: int, delete_from: int | None = None) -> ReplayResult:
    """Rewind ``source`` to ``from_id`` through the fence (and delete ids >= ``delete_from`` if given)."""
    check_request(source, from_id, delete_from)
    try:
        before, epoch, deleted = store.rewind(source, from_id, delete_from)
    except StateConflict as exc:
        raise ReplayRefused(str(exc)) from None
    return ReplayResult(source, before, from_id, epoch, delete_from, deleted)
