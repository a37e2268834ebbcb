"""The one place that turns a response body into events.

A page is either unusable as a whole (:class:`MalformedPage`: the drain
quarantines the raw bytes and retries) or usable, in which case every item
ends up in exactly one of two lists: ``events`` (stored) or ``quarantined``
(kept with its raw JSON and a reason). Nothing received is silently dropped.

Salvage. A page that is well-formed except for one item the JSON parser
refuses (nested too deeply, a number out of range such as 1e400, an integer
of thousands of digits, an invalid escape, bytes that are not UTF-8) would
otherwise be refused whole on every attempt: the cursor could never move and
the source would be stuck. So when the body does not parse, its ``events``
array is split into items at the byte level (:func:`split_events`: strings,
escapes and nesting respected, nothing parsed) and each item is parsed alone.
The good ones are taken as usual; one that cannot be read is quarantined with
its exact bytes. The cursor may pass it only if its id can still be read from
the raw bytes (a top-level ``"id"`` integer); if not, the page stops there:
the items before it are taken and the cursor stays before it, so no event
after it is skipped unseen. ``event-ingest skip`` moves such a source on.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .jsonsplit import array_member_items, member_values

MAX_EVENT_ID = 2**63 - 1  # Postgres bigint

# json.dumps writes a NUL as the escape \u0000; a backslash before it that is itself escaped
# (the text "\\u0000") is a harmless backslash followed by "u0000", which jsonb stores fine.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# Reasons named in a page's warning (log line); the quarantine table has them all.
_REASONS_IN_WARNING = 3

_ID_LITERAL = re.compile(rb"[1-9][0-9]{0,18}")  # a positive integer that may fit in a bigint


class MalformedPage(ValueError):
    """The body as a whole cannot be read as a page."""


@dataclass(frozen=True)
class Event:
    id: int
    payload_json: str  # the payload re-serialised as JSON text, ready for jsonb


@dataclass(frozen=True)
class Quarantined:
    raw: bytes
    reason: str
    event_id: int | None = None  # set when the item had a valid id (it still counts for the cursor)


@dataclass
class Page:
    events: list[Event] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    item_count: int = 0

    @property
    def empty(self) -> bool:
        return self.item_count == 0

    def next_cursor(self, cursor: int) -> int:
        """Highest id accounted for (stored or quarantined with its id); never moves back."""
        ids = [e.id for e in self.events] + [q.event_id for q in self.quarantined if q.event_id is not None]
        return max([cursor, *ids])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON that Python reads as inf, which jsonb refuses and no id can be.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def decode_body(body: bytes, what: str = "body") -> Any:
    if not body:
        raise MalformedPage(f"empty {what}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPage(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        # NaN/Infinity are accepted by Python but are not JSON (and jsonb refuses them).
        return _loads(text)
    except RecursionError:
        raise MalformedPage("JSON nested too deeply") from None
    except ValueError as exc:
        why = str(exc)
        if "integer string conversion" in why:  # Python's own guard against quadratic int parsing
            why = f"an integer has more than {sys.get_int_max_str_digits()} digits"
        raise MalformedPage(f"{what} is not JSON ({why})") from None


def _item_raw(item: Any) -> bytes:
    try:
        return json.dumps(item, ensure_ascii=False).encode("utf-8", "backslashreplace")
    except (ValueError, RecursionError):
        return repr(item).encode("utf-8", "backslashreplace")


def _invalid_id_reason(item_id: Any) -> str | None:
    # bool is an int subclass in Python: true/false are not ids.
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        return f"id is not an integer ({type(item_id).__name__})" if item_id is not None else "id is null"
    if item_id <= 0:
        return f"id {item_id} is not positive"
    if item_id > MAX_EVENT_ID:
        return "id does not fit in 64 bits"
    return None


def _payload_json(payload: Any, max_bytes: int) -> tuple[str | None, str | None]:
    """(json text, None) or (None, why it cannot be stored as jsonb, or is over the cap)."""
    try:
        # allow_nan=False: a number like 1e400 parses to float('inf'), which would be written as
        # Infinity, which jsonb refuses - and that would fail the whole page's commit, every time.
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        return None, "payload nested too deeply"
    except ValueError:
        return None, "payload holds a number out of float range (like 1e400), which jsonb cannot store as read"
    try:
        size = len(text.encode("utf-8"))  # encoded once: checks the surrogates and gives the size
    except UnicodeEncodeError:
        return None, "payload holds an unpaired surrogate (\\ud800-\\udfff), which Postgres cannot store"
    if _NUL_ESCAPE.search(text) or "\x00" in text:
        return None, "payload holds a NUL character (\\u0000), which Postgres jsonb cannot store"
    if size > max_bytes:
        return None, f"payload is {size} bytes, over the {max_bytes}-byte cap"
    return text, None


def split_events(body: bytes) -> list[bytes] | None:
    """The raw bytes of each item of the top-level ``events`` array, or None unless the body is,
    by its structure, one complete page (:func:`~.jsonsplit.array_member_items`). A truncated body is never split."""
    return array_member_items(body, "events")


def scan_id(raw: bytes) -> int | None:
    """The id of an item that cannot be parsed, read from its bytes: one top-level ``"id"`` member
    whose value is a positive integer that fits in a bigint. None if that is not certain."""
    found = member_values(raw, "id")
    if found is None or len(found) != 1 or not _ID_LITERAL.fullmatch(found[0]) or int(found[0]) > MAX_EVENT_ID:
        return None
    return int(found[0])


@dataclass(frozen=True)
class _Unreadable:
    """An item the JSON parser refused, kept as served."""

    raw: bytes
    reason: str
    event_id: int | None


def _read_item(raw: bytes) -> Any:
    """One item parsed alone, or an :class:`_Unreadable` saying why not."""
    try:
        return decode_body(raw, what="item")
    except MalformedPage as exc:
        return _Unreadable(raw, str(exc), scan_id(raw))


def _events_of(document: Any) -> list:
    if not isinstance(document, dict):
        raise MalformedPage(f"top level is {type(document).__name__}, expected an object with 'events'")
    if "events" not in document:
        raise MalformedPage("field 'events' is missing")
    items = document["events"]
    if not isinstance(items, list):
        raise MalformedPage(
            f"field 'events' is {type(items).__name__ if items is not None else 'null'}, expected a list"
        )
    return items


def parse_page(body: bytes, *, cursor: int, max_payload_bytes: int) -> Page:
    """Read one response body. Raises :class:`MalformedPage` if it is not a page at all."""
    salvage_warning = None
    try:
        document = decode_body(body)
    except MalformedPage as whole:
        pieces = split_events(body)
        if pieces is None:
            raise
        # Only the parser refused it, and the shape is a page: read it item by item, each kept as served.
        raws: list[bytes | None] = list(pieces)
        items = [_read_item(piece) for piece in pieces]
        salvage_warning = f"page not readable whole ({whole}); read item by item"
    else:
        items = _events_of(document)
        raws = [None] * len(items)

    page = Page(item_count=len(items))
    if salvage_warning:
        page.warnings.append(salvage_warning)
    seen: set[int] = set()
    previous: int | None = None
    unordered = below_cursor = 0
    for position, (item, served) in enumerate(zip(items, raws), start=1):

        def keep(reason: str, event_id: int | None = None, item: Any = item, served: bytes | None = served) -> None:
            # The bytes as served when the page was read item by item; else the item re-serialised.
            raw = served if served is not None else _item_raw(item)
            page.quarantined.append(Quarantined(raw, reason, event_id))

        if isinstance(item, _Unreadable):
            if item.event_id is None:
                # Its id is unknown, so the cursor cannot safely pass it: take the items before it
                # and stop. The later ones are served again at the next request.
                keep(f"event cannot be read: {item.reason}; nor can its id, so the cursor stops before it")
                page.warnings.append(
                    f"item {position} of {len(items)} cannot be read and has no readable id: the cursor stops "
                    f"before it ({len(items) - position} later items wait); `event-ingest skip` moves past it"
                )
                break
            keep(f"event {item.event_id} cannot be read: {item.reason}", item.event_id)
            seen.add(item.event_id)
            continue
        if not isinstance(item, dict):
            keep(f"event is {type(item).__name__}, not an object")
            continue
        if "id" not in item:
            keep("id is missing")
            continue
        item_id = item["id"]
        reason = _invalid_id_reason(item_id)
        if reason:
            keep(reason)
            continue
        if item_id in seen:
            keep(f"duplicate id {item_id} within one page", item_id)
            continue
        seen.add(item_id)
        if previous is not None and item_id < previous:
            unordered += 1
        previous = item_id
        if item_id <= cursor:
            below_cursor += 1
        text, why = _payload_json(item.get("payload"), max_payload_bytes)
        if text is None:
            keep(why or "payload cannot be stored", item_id)
            continue
        page.events.append(Event(item_id, text))
    if unordered:
        page.warnings.append(f"{unordered} ids not ascending (stored as served)")
    if below_cursor:
        page.warnings.append(f"{below_cursor} ids at or below the cursor {cursor} (re-sent; kept if not stored yet)")
    if page.quarantined:
        # Name the reasons, so the log line says why and not only how many.
        reasons = list(dict.fromkeys(q.reason for q in page.quarantined))
        named = "; ".join(reasons[:_REASONS_IN_WARNING]) + ("; ..." if len(reasons) > _REASONS_IN_WARNING else "")
        page.warnings.append(f"{len(page.quarantined)} items quarantined: {named}")
    return page
