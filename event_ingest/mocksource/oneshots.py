"""One-shot responses: each kind's spec parser and the action that answers /events with it.

``POST /control {"next": [{"kind": ...}, ...]}`` queues them; the next /events
requests get them in order, before any configured fault.
"""

from __future__ import annotations

import functools
import json
import socket
import struct
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from event_ingest.mocksource.spec import _JSON, _has_header, _SpecReader

if TYPE_CHECKING:
    from event_ingest.mocksource.handler import _Handler


@dataclass(frozen=True)
class _OneShot:
    kind: str
    params: dict[str, Any]


def _parse_status(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = _SpecReader(spec, {"status", "headers", "body", "body_b64", "omit_content_length"})
    status = r.get_int("status", None, 100, 999)
    headers = r.get_headers()
    body = r.get_body()
    if body is None:
        body = json.dumps({"error": f"injected status {status}"}).encode() if status >= 400 else b""
    if not _has_header(headers, "content-type"):
        headers.append(("Content-Type", _JSON))
    return {
        "status": status,
        "headers": headers,
        "body": body,
        "omit_content_length": r.get_bool("omit_content_length", False),
    }


def _parse_body(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = _SpecReader(
        spec,
        {"status", "headers", "body", "body_b64", "content_type", "content_encoding", "omit_content_length"},
    )
    body = r.get_body()
    if body is None:
        raise ValueError("body: body or body_b64 is required")
    headers = [("Content-Type", r.get_str("content_type", _JSON) or _JSON)]
    encoding = r.get_str("content_encoding", None)
    if encoding is not None:
        headers.append(("Content-Encoding", encoding))
    return {
        "status": r.get_int("status", 200, 100, 999),
        "headers": headers + r.get_headers(),
        "body": body,
        "omit_content_length": r.get_bool("omit_content_length", False),
    }


def _parse_delay_then(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = _SpecReader(spec, {"delay_ms"})
    return {"delay_ms": r.get_number("delay_ms", 1000, 0, 3_600_000)}


def _parse_slow_body(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = _SpecReader(spec, {"content_length", "interval_ms", "duration_s"})
    return {
        "content_length": r.get_int("content_length", 1_000_000, 16, 2**40),
        "interval_ms": r.get_number("interval_ms", 1000, 1, 600_000),
        "duration_s": r.get_number("duration_s", 60, 0, 3600),
    }


def _parse_reset(spec: Mapping[str, Any]) -> dict[str, Any]:
    _SpecReader(spec, set())
    return {}


def _parse_gzip_bomb(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = _SpecReader(spec, {"size_mb"})
    # Compress now (cached) so the /events answer is not delayed by it.
    return {"body": _gzip_bomb(r.get_int("size_mb", 100, 1, 4096))}


def _parse_redirect(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = _SpecReader(spec, {"location", "status"})
    location = r.get_str("location", None)
    if not location or "\r" in location or "\n" in location:
        raise ValueError("redirect.location is required (one line)")
    return {"location": location, "status": r.get_int("status", 302, 300, 399)}


def _parse_events(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = _SpecReader(spec, {"events", "record"})
    if "events" not in spec:
        raise ValueError("events.events is required")
    # Any JSON value is allowed (hostile shapes are the point); record=true
    # counts well-formed items' ids as served, for harnesses that inject
    # events they expect to be stored.
    return {
        "body": json.dumps({"events": spec["events"]}).encode(),
        "events": spec["events"],
        "record": r.get_bool("record", False),
    }


@functools.lru_cache(maxsize=4)
def _gzip_bomb(size_mb: int) -> bytes:
    """Gzip of the start of a valid response followed by ``size_mb`` MiB of
    spaces: a streaming parser keeps reading while memory use explodes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31 = gzip container
    chunk = b" " * (1 << 20)
    parts = [compressor.compress(b'{"events": [')]
    parts.extend(compressor.compress(chunk) for _ in range(size_mb))
    parts.append(compressor.flush())
    return b"".join(parts)


# One-shot actions. Each returns True if normal handling should continue
# afterwards (only delay_then does), False if the response is complete.


def _act_raw(h: _Handler, p: dict[str, Any]) -> bool:
    h._send(p["status"], p["body"], p["headers"], omit_content_length=p["omit_content_length"])
    return False


def _act_delay_then(h: _Handler, p: dict[str, Any]) -> bool:
    if h._state.stopping.wait(p["delay_ms"] / 1000.0):
        h.close_connection = True
        return False
    return True


def _act_slow_body(h: _Handler, p: dict[str, Any]) -> bool:
    """Slowloris: promise a big body, dribble a byte per interval, never finish."""
    h.send_response(200)
    h.send_header("Content-Type", _JSON)
    h.send_header("Content-Length", str(p["content_length"]))
    h.end_headers()
    h.close_connection = True  # the promised body is never completed
    deadline = time.monotonic() + p["duration_s"]
    head = b'{"events": ['
    sent = 0
    try:
        h.wfile.write(head)
        sent = len(head)
        while sent < p["content_length"] - 1 and time.monotonic() < deadline:
            if h._state.stopping.wait(p["interval_ms"] / 1000.0):
                break
            h.wfile.write(b" ")
            sent += 1
    except OSError:
        pass  # the client gave up, which is what this fault is for
    return False


def _act_reset(h: _Handler, p: dict[str, Any]) -> bool:
    """Drop the connection with an RST and no response at all."""
    h.close_connection = True
    try:
        # Linger 0 turns close() into an RST rather than a polite FIN.
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    # The fd really closes once the handler's rfile is closed in finish().
    h.connection.close()
    return False


def _act_gzip_bomb(h: _Handler, p: dict[str, Any]) -> bool:
    h._send(200, p["body"], [("Content-Type", _JSON), ("Content-Encoding", "gzip")])
    return False


def _act_redirect(h: _Handler, p: dict[str, Any]) -> bool:
    h._send_json(p["status"], {"error": "moved"}, [("Location", p["location"])])
    return False


def _act_events(h: _Handler, p: dict[str, Any]) -> bool:
    ids: list[int] = []
    if p["record"] and isinstance(p["events"], list):
        ids = [
            e["id"]
            for e in p["events"]
            if isinstance(e, dict) and type(e.get("id")) is int  # not bool
        ]
    h._send_events(p["body"], ids)
    return False


_Parse = Callable[[Mapping[str, Any]], dict[str, Any]]  # spec -> validated params
_Act = Callable[["_Handler", dict[str, Any]], bool]  # True = continue normal handling

_ONESHOTS: dict[str, tuple[_Parse, _Act]] = {
    "status": (_parse_status, _act_raw),
    "body": (_parse_body, _act_raw),
    "delay_then": (_parse_delay_then, _act_delay_then),
    "slow_body": (_parse_slow_body, _act_slow_body),
    "reset": (_parse_reset, _act_reset),
    "gzip_bomb": (_parse_gzip_bomb, _act_gzip_bomb),
    "redirect": (_parse_redirect, _act_redirect),
    "events": (_parse_events, _act_events),
}

#: Kinds accepted in ``POST /control {"next": [{"kind": ...}, ...]}``.
ONESHOT_KINDS: tuple[str, ...] = tuple(_ONESHOTS)


def _parse_oneshots(raw: Any) -> list[_OneShot]:
    if not isinstance(raw, list):
        raise ValueError('next must be a list of {"kind": ...} objects')
    shots = []
    for i, spec in enumerate(raw):
        if not isinstance(spec, dict) or spec.get("kind") not in _ONESHOTS:
            raise ValueError(f"next[{i}]: kind must be one of {sorted(_ONESHOTS)}")
        parse, _ = _ONESHOTS[spec["kind"]]
        shots.append(_OneShot(spec["kind"], parse(spec)))
    return shots
