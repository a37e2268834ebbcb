"""What the commands print: tables and lines for a terminal, and the dicts their ``--json`` prints."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from ..config import RunSettings, SourceConfig

if TYPE_CHECKING:
    from ..core.status import SourceRow, StatusReport
    from ..core.store import QuarantineItem

REASON_CHARS = 90
LAST_ERROR_CHARS = 300
SHOW_BYTES = 65536

STATUS_COLUMNS = [
    "source",
    "cursor",
    "events",
    "gaps",
    "lag_s",
    "last_commit",
    "error_rate",
    "quarantined",
    "fenced",
    "lease",
    "stuck",
    "config",
]


def print_table(rows: list[dict[str, Any]], headers: list[str]) -> None:
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    print("  ".join(h.ljust(widths[h]) for h in headers).rstrip())
    for r in rows:
        print("  ".join(str(r[h]).ljust(widths[h]) for h in headers).rstrip())


def one_line(text: str, limit: int) -> str:
    """Text from a source or a page, escaped to one line and cut at ``limit`` characters."""
    from ..core.quarantine import escape_bytes

    text = escape_bytes(text.encode())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- status ------------------------------------------------------------------------------------------


def status_cells(row: SourceRow) -> dict[str, Any]:
    def dash(value: object) -> object:
        return "-" if value is None else value

    return {
        "source": row.source,
        "cursor": dash(row.cursor),
        "events": row.events,
        "gaps": row.gaps,
        "lag_s": dash(row.lag_s),
        "last_commit": dash(row.last_commit),
        "error_rate": "-" if row.error_rate is None else f"{row.error_rate:.1%}",
        "quarantined": row.quarantined,
        "fenced": row.fenced,
        "lease": {True: "held", False: "free", None: "?"}[row.lease],
        "stuck": "STUCK" if row.stuck else "no",
        "config": row.config + (f" ({'; '.join(row.notes)})" if row.notes else ""),
    }


def print_status(report: StatusReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in report.rows]))
        for note in report.notes:
            print(f"event-ingest: note: {note}", file=sys.stderr)
        return
    if not report.rows:
        print("no sources ingested yet")
    else:
        print_table([status_cells(r) for r in report.rows], STATUS_COLUMNS)
    for row in report.rows:
        if row.stuck:
            print(f"{row.source}: {row.stuck_reason}")
        if row.counter_drift:
            print(f"{row.source}: {row.counter_drift}")
        if row.last_error and row.error_rate:
            print(f"{row.source}: last error {row.last_error_at}: {one_line(row.last_error, LAST_ERROR_CHARS)}")
    for rename in report.renames:
        print(rename.summary())
    for note in report.notes:
        print(f"note: {note}")


# ---- quarantine --------------------------------------------------------------------------------------


def item_dict(item: QuarantineItem) -> dict[str, Any]:
    shown = {k: v for k, v in item.__dict__.items() if k != "raw"}
    for key in ("received_at", "last_seen_at", "resolved_at"):
        shown[key] = shown[key].isoformat(timespec="seconds") if shown[key] is not None else None
    shown["state"] = item.state
    return shown


def print_items(items: list[QuarantineItem], total: int, source: str | None, include_resolved: bool) -> None:
    what = "items" if include_resolved else "open items"
    if not items:
        print(f"no {what} in quarantine" + (f" for source {source}" if source else ""))
        return
    rows = [
        {
            "id": i.id,
            "source": i.source,
            "event_id": "-" if i.event_id is None else i.event_id,
            "state": i.state,
            "seen": i.seen_count,
            "first_seen": f"{i.received_at:%Y-%m-%d %H:%M:%S}",
            "last_seen": f"{i.last_seen_at:%Y-%m-%d %H:%M:%S}",
            "bytes": i.size,
            "reason": one_line(i.reason, REASON_CHARS),
        }
        for i in items
    ]
    print_table(rows, list(rows[0]))
    print(f"{len(items)} of {total} {what}, newest first" + ("" if len(items) == total else " (--limit N for more)"))


def print_item(item: QuarantineItem, max_bytes: int) -> None:
    from ..core.quarantine import escape_bytes

    for key, value in item_dict(item).items():
        if key == "reason":
            value = escape_bytes(value.encode())
        print(f"{key}: {'-' if value is None else value}")
    raw = item.raw or b""
    shown = raw[:max_bytes]
    print(
        f"raw ({item.size} bytes{'' if len(shown) == item.size else f', first {len(shown)} shown; --raw for all'};"
        " escaped: \\\\ \\n \\r \\t \\uNNNN, and \\xNN for bytes that are not UTF-8):"
    )
    print(escape_bytes(shown))


def discarded_line(item: QuarantineItem) -> str:
    return (
        f"quarantine item {item.id} (source {item.source}, event {item.event_id if item.event_id else '-'}): "
        f"discarded; its {item.size} bytes stay in the table (`event-ingest quarantine show {item.id}`)"
    )


# ---- config ------------------------------------------------------------------------------------------


def stated_fields(settings: SourceConfig | RunSettings, skip: tuple[str, ...] = ()) -> list[str]:
    """The fields the file sets, as ``field=value`` (header values already redacted by to_dict)."""
    shown = settings.to_dict()
    return [
        f"{name}={json.dumps(shown[name])}"
        for name in type(settings).model_fields
        if name in settings.model_fields_set and name not in skip
    ]
