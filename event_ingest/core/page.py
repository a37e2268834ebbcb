"""The one place that turns a response body into events.

A page is either unusable as a whole (:class:`MalformedPage`: the drain
quarantines the raw bytes and retries) or usable, in which case every item
ends up in exactly one of two lists: ``events`` (stored) or ``quarantined``
(kept with its raw JSON and a reason). Nothing received is silently dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_EVENT_ID = 2**63 - 1  # Postgres bigint

# json.dumps writes a NUL as the escape \u0000; a backslash before it that is itself escaped
# (the text "\\u0000") is a harmless backslash followed by "u0000", which jsonb stores fine.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# Reasons named in a page's warning (log line); the quarantine table has them all.
_REASONS_IN_WARNING = 3


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


def decode_body(body: bytes) -> Any:
    if not body:
        raise MalformedPage("empty body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPage(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        # NaN/Infinity are accepted by Python but are not JSON (and jsonb refuses them).
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise MalformedPage("JSON nested too deeply") from None
    except ValueError as exc:
        raise MalformedPage(f"body is not JSON ({exc})") from None


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


def parse_page(body: bytes, *, cursor: int, max_payload_bytes: int) -> Page:
    """Read one response body. Raises :class:`MalformedPage` if it is not a page at all."""
    document = decode_body(body)
    if not isinstance(document, dict):
        raise MalformedPage(f"top level is {type(document).__name__}, expected an object with 'events'")
    if "events" not in document:
        raise MalformedPage("field 'events' is missing")
    items = document["events"]
    if not isinstance(items, list):
        raise MalformedPage(f"field 'events' is {type(items).__name__ if items is not None else 'null'}, expected a list")

    page = Page(item_count=len(items))
    seen: set[int] = set()
    previous: int | None = None
    unordered = below_cursor = 0
    for item in items:
        if not isinstance(item, dict):
            page.quarantined.append(Quarantined(_item_raw(item), f"event is {type(item).__name__}, not an object"))
            continue
        if "id" not in item:
            page.quarantined.append(Quarantined(_item_raw(item), "id is missing"))
            continue
        item_id = item["id"]
        reason = _invalid_id_reason(item_id)
        if reason:
            page.quarantined.append(Quarantined(_item_raw(item), reason))
            continue
        if item_id in seen:
            page.quarantined.append(Quarantined(_item_raw(item), f"duplicate id {item_id} within one page", item_id))
            continue
        seen.add(item_id)
        if previous is not None and item_id < previous:
            unordered += 1
        previous = item_id
        if item_id <= cursor:
            below_cursor += 1
        text, why = _payload_json(item.get("payload"), max_payload_bytes)
        if why is not None:
            page.quarantined.append(Quarantined(_item_raw(item), why, item_id))
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
