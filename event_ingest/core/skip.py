"""Skip: the operator's way past a page a source cannot get beyond.

A page whose first item cannot be read, nor its id, holds the cursor where it is (page.py), and a
body that is never a page is refused on every attempt: either way the source is stuck, and only
an operator can decide to give up on what it serves at the cursor. ``skip`` does it the way a
drain commits, so it is as safe as one:

lease -> epoch bump (fence) -> gate -> fetch the page at the cursor -> ONE commit that keeps the
raw page in quarantine (the reason names the operator action) and moves the cursor to N.

Timeline it defends against:

1. A drain of the source is running: the lease is busy, and skip stops before asking anything.
2. A drain paused past its lease wakes up after the skip: the epoch bump fenced it, so its commit
   matches nothing and cannot move the cursor back or store what was skipped.
3. The cursor moved between the operator's look and the skip: the commit is fenced on the cursor
   read at the epoch bump, and N is checked against that cursor, not the one the operator saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from ..config import LEASE_WAIT_S, SourceConfig
from .client import SourceClient
from .drain import consumer_id
from .gate import GateUnavailable
from .lease import Lease, LeaseUnavailable
from .page import MAX_EVENT_ID, Quarantined
from .store import Fenced, Store

# A slot given back unsent (a pause between grant and send) is asked for again, a few times.
MAX_UNSENT_SLOTS = 3


class SkipRefused(ValueError):
    """The request itself is wrong (N not above the cursor): nothing was done."""


class SkipFailed(RuntimeError):
    """The skip could not be done now (lease busy, source or Redis unreachable, fenced): nothing moved."""


@dataclass(frozen=True)
class SkipResult:
    source: str
    epoch: int
    cursor_before: int
    cursor_after: int
    page_bytes: int
    page_items: int | None  # items in the page, if it could be read as a page at all
    reason: str  # the quarantine reason kept with the raw page

    def summary(self) -> str:
        items = f", {self.page_items} items" if self.page_items is not None else ", not readable as a page"
        return (
            f"source {self.source}: cursor moved {self.cursor_before} -> {self.cursor_after} (epoch {self.epoch}); "
            f"the page served at lastId={self.cursor_before} ({self.page_bytes} bytes{items}) is kept in "
            f"quarantine with the reason: {self.reason}"
        )


def skip_page(
    source: SourceConfig,
    *,
    store: Store,
    redis_client: redis.Redis,
    to_id: int,
    lease_ttl_s: float = 30.0,
    lease_wait_s: float = LEASE_WAIT_S,
    gate_wait_s: float = 60.0,
) -> SkipResult:
    """Move ``source``'s cursor to ``to_id``, keeping the page served at the current cursor in quarantine."""
    name = source.name
    if not 0 < to_id <= MAX_EVENT_ID:
        raise SkipRefused(f"--to-id {to_id} is not an event id (1 to {MAX_EVENT_ID})")
    _refuse_unless_ahead(name, to_id, _known_cursor(store, name))
    lease = Lease(redis_client, name, ttl_s=lease_ttl_s, wait_s=lease_wait_s)
    try:
        if not lease.acquire():
            raise SkipFailed(
                f"source {name!r}: a drain holds the lease; nothing done (try again when it ends, "
                "or pause the source's sensor first)"
            )
    except LeaseUnavailable as exc:
        raise SkipFailed(str(exc)) from None
    client = SourceClient.through_gate(source, redis_client, token=consumer_id())
    try:
        store.ensure_source(name)
        epoch, cursor = store.begin_epoch(name)  # from here on, any other holder's commit is refused
        _refuse_unless_ahead(name, to_id, cursor)
        body, items = _fetch(client, cursor, gate_wait_s)
        reason = (
            f"skipped by an operator: `event-ingest skip {name} --to-id {to_id}` moved the cursor "
            f"{cursor} -> {to_id} past this page, served at lastId={cursor}"
        )
        try:
            store.commit_page(
                name,
                epoch=epoch,
                old_cursor=cursor,
                new_cursor=to_id,
                events=[],
                quarantined=[Quarantined(body, reason)],
            )
        except Fenced as exc:
            raise SkipFailed(f"{exc}; nothing moved") from None
        return SkipResult(name, epoch, cursor, to_id, len(body), items, reason)
    finally:
        client.close()
        lease.release()


def _known_cursor(store: Store, name: str) -> int:
    status = store.source_status(name)
    return status.cursor if status is not None else 0


def _refuse_unless_ahead(name: str, to_id: int, cursor: int) -> None:
    if to_id <= cursor:
        raise SkipRefused(
            f"source {name!r}: --to-id {to_id} is not above the cursor {cursor}; nothing done "
            "(skip only moves forward; the events at or below the cursor are already accounted for)"
        )


def _fetch(client: SourceClient, cursor: int, gate_wait_s: float) -> tuple[bytes, int | None]:
    """The raw page at ``cursor``, through the gate like any request; (bytes, items if it is a page)."""
    name = client.source.name
    try:
        outcome = client.fetch(cursor, max_wait_s=gate_wait_s, max_unsent=MAX_UNSENT_SLOTS)
    except GateUnavailable as exc:
        raise SkipFailed(str(exc)) from None
    if outcome is None:
        raise SkipFailed(f"source {name!r}: the spacing gate gave no slot within {gate_wait_s:g}s; nothing moved")
    if not outcome.sent:
        raise SkipFailed(f"source {name!r}: no request could be sent (the process kept pausing); nothing moved")
    if outcome.status == 200 and outcome.body is not None:
        return outcome.body, outcome.page.item_count if outcome.page is not None else None
    raise SkipFailed(
        f"source {name!r}: the page at lastId={cursor} could not be fetched ({outcome.reason}); nothing moved"
    )
