"""What an operator does with the quarantine: read an item safely, requeue it once fixed, discard it.

Requeue stores an item that can be read now - the quarantined bytes read again (a parser that learned
better), or a corrected item the operator gives (``--from-file``) - the way a drain commits, so it is as
safe as one:

lease -> epoch bump (fence) -> ONE transaction: the fence (cursor unchanged), the events stored, the item
marked requeued.

Timeline it defends against:

1. A drain of the source runs: the lease is busy, and requeue stops before changing anything.
2. A drain paused past its lease wakes after the requeue: the epoch bump fenced it.
3. Two operators requeue one item: the item's row is locked in the commit; the second finds it requeued.

The bytes are read by the one page parser (core/page.py), as an item of a page or as a whole page (a body
quarantined whole). Refused, saying why and changing nothing, when the parser still quarantines anything
in them, when an event is stored already (the source re-sent it since, or it was a duplicate), or when an
id is above the cursor: the source has not been read past it yet, and storing it would put an event ahead
of the cursor (``event-ingest skip`` first, if the source is stuck on it).

Discard marks an item discarded: its bytes and reason stay in the table, it no longer counts as open
(``quarantine_empty``), and an item that carried an id still accounts for that id in the gap check, so a
discarded event is a decision on record, not a gap. Nothing is ever deleted from the quarantine here.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import redis

from .lease import Lease, LeaseUnavailable
from .page import Event, MalformedPage, parse_page, scan_id, split_events
from .store import Fenced, QuarantineItem, StateConflict, Store

# Characters shown as themselves; everything else (controls, format characters such as bidi overrides,
# bytes that are not UTF-8) is written as an escape, so printing an item cannot drive the terminal.
_SHOWN_CATEGORIES = ("L", "M", "N", "P", "S", "Zs")
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class QuarantineRefused(ValueError):
    """The request cannot be done as asked (no such item, still unreadable, stored already, discarded
    already): nothing was changed."""


class RequeueFailed(RuntimeError):
    """The requeue could not be done now (lease busy, Redis down, fenced): nothing was changed."""


@dataclass(frozen=True)
class RequeueResult:
    item_id: int
    source: str
    epoch: int
    cursor: int
    event_ids: list[int] = field(default_factory=list)
    from_file: str | None = None

    def summary(self) -> str:
        what = f"the corrected item in {self.from_file}" if self.from_file else "its quarantined bytes, read again"
        return (
            f"quarantine item {self.item_id}: source {self.source}: stored event "
            f"{', '.join(map(str, self.event_ids))} from {what} (epoch {self.epoch}, cursor {self.cursor} "
            "unchanged); the item is marked requeued"
        )


def escape_bytes(raw: bytes) -> str:
    """Bytes as text that is safe on a terminal and says exactly what was there: UTF-8 letters, digits,
    punctuation and spaces as they are, ``\\\\`` for a backslash, ``\\n``, ``\\r``, ``\\t``, ``\\uNNNN`` for other
    characters, and ``\\xNN`` only for bytes that are not UTF-8."""
    out = []
    for char in raw.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as surrogateescape carries it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif unicodedata.category(char).startswith(_SHOWN_CATEGORIES) and (char == " " or not char.isspace()):
            out.append(char)
        else:  # \u for a character that was valid UTF-8, so it never reads like a \x byte
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def read_events(raw: bytes, *, max_payload_bytes: int) -> list[Event]:
    """The events in ``raw`` - one item, or a whole page - read by the page parser. QuarantineRefused, with the
    parser's reasons, if anything in it would still be quarantined."""
    # A page by its structure (an object whose "events" is an array) that is not itself an item with an id.
    is_page = split_events(raw) is not None and scan_id(raw) is None
    body = raw if is_page else b'{"events": [' + raw + b"]}"
    try:
        page = parse_page(body, cursor=0, max_payload_bytes=max_payload_bytes)
    except MalformedPage as exc:
        raise QuarantineRefused(f"cannot be read: {exc}; nothing done") from None
    if page.quarantined:
        reasons = "; ".join(dict.fromkeys(q.reason for q in page.quarantined))
        raise QuarantineRefused(f"still cannot be stored: {reasons}; nothing done")
    if not page.events:
        raise QuarantineRefused("holds no event; nothing done")
    return page.events


def requeue(
    store: Store,
    redis_client: redis.Redis,
    item_id: int,
    *,
    max_payload_bytes: int,
    fixed: bytes | None = None,
    from_file: str | None = None,
    lease_ttl_s: float = 30.0,
    lease_wait_s: float = 5.0,
) -> RequeueResult:
    """Store quarantine item ``item_id`` (or ``fixed``, its corrected bytes) through the fence."""
    item = store.quarantine_item(item_id)
    if item is None:
        raise QuarantineRefused(f"quarantine item {item_id} does not exist; nothing done")
    where = f"quarantine item {item_id} (source {item.source})"
    if item.resolution == "requeued":
        raise QuarantineRefused(f"{where} was requeued already ({item.resolution_note}); nothing done")
    raw = fixed if fixed is not None else item.raw
    if raw is None:
        raise QuarantineRefused(f"{where} holds no bytes to store; nothing done")
    try:
        events = read_events(raw, max_payload_bytes=max_payload_bytes)
    except QuarantineRefused as exc:
        raise QuarantineRefused(f"{where}: {exc}") from None
    lease = Lease(redis_client, item.source, ttl_s=lease_ttl_s, wait_s=lease_wait_s)
    try:
        if not lease.acquire():
            raise RequeueFailed(
                f"{where}: a drain holds the source's lease; nothing done (pause the source's "
                "sensor first, or try again when the drain ends)"
            )
    except LeaseUnavailable as exc:
        raise RequeueFailed(str(exc)) from None
    try:
        epoch, cursor = store.begin_epoch(item.source)  # from here on, any other holder's commit is refused
        ahead = [e.id for e in events if e.id > cursor]
        if ahead:
            raise QuarantineRefused(
                f"{where}: event {', '.join(map(str, ahead))} is above the cursor {cursor}: the source has not been "
                "read past it, and the next drain will fetch it (if the source is stuck on it: `event-ingest skip "
                f"{item.source} --to-id {max(ahead)}` first, then requeue); nothing done"
            )
        ids = [e.id for e in events]
        note = f"requeued by an operator: event {', '.join(map(str, ids))} stored" + (
            f" from the corrected item in {from_file}" if from_file else " from these bytes"
        )
        try:
            store.requeue(item.source, epoch=epoch, cursor=cursor, item_id=item_id, events=events, note=note)
        except StateConflict as exc:
            raise QuarantineRefused(str(exc)) from None
        except Fenced as exc:
            raise RequeueFailed(f"{exc}; nothing done") from None
        return RequeueResult(item_id, item.source, epoch, cursor, ids, from_file)
    finally:
        lease.release()


def discard(store: Store, item_id: int) -> QuarantineItem:
    """Mark an open item discarded (kept, no longer open)."""
    try:
        return store.discard(item_id, "discarded by an operator")
    except StateConflict as exc:
        raise QuarantineRefused(str(exc)) from None
