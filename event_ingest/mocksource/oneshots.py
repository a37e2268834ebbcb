"""One-shot responses: each kind's spec parser and the action that answers /events with it.

``POST /control {"next": [{"kind": ...}, ...]}`` queues them; the next /events
requests get them in order, before any configured fault. An action answers
through a ``Responder``, the small response API the request handler offers
(``handler.Handler`` is one); this module does not know the handler.
"""

from __future__ import annotations

import functools
import json
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from event_ingest.mocksource.spec import JSON_CONTENT_TYPE, SpecReader, has_header


class Responder(Protocol):
    """How an action answers the /events request its one-shot was drawn for."""

    def send(
        self,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str, str]] = ...,
        *,
        omit_content_length: bool = False,
    ) -> None:
        """A whole response (JSON unless ``headers`` say otherwise). A body framed by ``headers``
        (Content-Length, Transfer-Encoding) or sent without Content-Length closes the connection."""

    def send_json(self, status: int, obj: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        """A whole response, ``obj`` as its JSON body."""

    def send_events(self, body: bytes, ids: list[int]) -> None:
        """A 200 page; ``ids`` count as served (not if the write fails)."""

    def send_head(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """The status line and ``headers`` as given, no body; the connection closes after this response."""

    def write(self, data: bytes) -> None:
        """More body, as it is."""

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``; True if the source began stopping meanwhile (the connection then closes)."""

    def reset(self) -> None:
        """Drop the connection with an RST and no response at all."""


@dataclass(frozen=True)
class OneShot:
    kind: str
    params: dict[str, Any]


def _parse_status(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = SpecReader(spec, {"status", "headers", "body", "body_b64", "omit_content_length"})
    status = r.get_int("status", None, 100, 999)
    headers = r.get_headers()
    body = r.get_body()
    if body is None:
        body = json.dumps({"error": f"injected status {status}"}).encode() if status >= 400 else b""
    if not has_header(headers, "content-type"):
        headers.append(("Content-Type", JSON_CONTENT_TYPE))
    return {
        "status": status,
        "headers": headers,
        "body": body,
        "omit_content_length": r.get_bool("omit_content_length", False),
    }


def _parse_body(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = SpecReader(
        spec,
        {"status", "headers", "body", "body_b64", "content_type", "content_encoding", "omit_content_length"},
    )
    body = r.get_body()
    if body is None:
        raise ValueError("body: body or body_b64 is required")
    headers = [("Content-Type", r.get_str("content_type", JSON_CONTENT_TYPE) or JSON_CONTENT_TYPE)]
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
    r = SpecReader(spec, {"delay_ms"})
    return {"delay_ms": r.get_number("delay_ms", 1000, 0, 3_600_000)}


def _parse_slow_body(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = SpecReader(spec, {"content_length", "interval_ms", "duration_s"})
    return {
        "content_length": r.get_int("content_length", 1_000_000, 16, 2**40),
        "interval_ms": r.get_number("interval_ms", 1000, 1, 600_000),
        "duration_s": r.get_number("duration_s", 60, 0, 3600),
    }


def _parse_reset(spec: Mapping[str, Any]) -> dict[str, Any]:
    SpecReader(spec, set())
    return {}


def _parse_gzip_bomb(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = SpecReader(spec, {"size_mb"})
    # Compress now (cached) so the /events answer is not delayed by it.
    return {"body": _gzip_bomb(r.get_int("size_mb", 100, 1, 4096))}


def _parse_redirect(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = SpecReader(spec, {"location", "status"})
    location = r.get_str("location", None)
    if not location or "\r" in location or "\n" in location:
        raise ValueError("redirect.location is required (one line)")
    return {"location": location, "status": r.get_int("status", 302, 300, 399)}


def _parse_events(spec: Mapping[str, Any]) -> dict[str, Any]:
    r = SpecReader(spec, {"events", "record"})
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


def _act_raw(r: Responder, p: dict[str, Any]) -> bool:
    r.send(p["status"], p["body"], p["headers"], omit_content_length=p["omit_content_length"])
    return False


def _act_delay_then(r: Responder, p: dict[str, Any]) -> bool:
    return not r.pause(p["delay_ms"] / 1000.0)


def _act_slow_body(r: Responder, p: dict[str, Any]) -> bool:
    """Slowloris: promise a big body, dribble a byte per interval, never finish."""
    # The promised body is never completed: the connection closes after it.
    r.send_head(200, [("Content-Type", JSON_CONTENT_TYPE), ("Content-Length", str(p["content_length"]))])
    deadline = time.monotonic() + p["duration_s"]
    head = b'{"events": ['
    sent = 0
    try:
        r.write(head)
        sent = len(head)
        while sent < p["content_length"] - 1 and time.monotonic() < deadline:
            if r.pause(p["interval_ms"] / 1000.0):
                break
            r.write(b" ")
            sent += 1
    except OSError:
        pass  # the client gave up, which is what this fault is for
    return False


def _act_reset(r: Responder, p: dict[str, Any]) -> bool:
    r.reset()
    return False


def _act_gzip_bomb(r: Responder, p: dict[str, Any]) -> bool:
    r.send(200, p["body"], [("Content-Type", JSON_CONTENT_TYPE), ("Content-Encoding", "gzip")])
    return False


def _act_redirect(r: Responder, p: dict[str, Any]) -> bool:
    r.send_json(p["status"], {"error": "moved"}, [("Location", p["location"])])
    return False


def _act_events(r: Responder, p: dict[str, Any]) -> bool:
    ids: list[int] = []
    if p["record"] and isinstance(p["events"], list):
        ids = [
            e["id"]
            for e in p["events"]
            if isinstance(e, dict) and type(e.get("id")) is int  # not bool
        ]
    r.send_events(p["body"], ids)
    return False


_Parse = Callable[[Mapping[str, Any]], dict[str, Any]]  # spec -> validated params
_Act = Callable[[Responder, dict[str, Any]], bool]  # True = continue normal handling

ONESHOTS: dict[str, tuple[_Parse, _Act]] = {
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
ONESHOT_KINDS: tuple[str, ...] = tuple(ONESHOTS)


def parse_oneshots(raw: Any) -> list[OneShot]:
    if not isinstance(raw, list):
        raise ValueError('next must be a list of {"kind": ...} objects')
    shots = []
    for i, spec in enumerate(raw):
        if not isinstance(spec, dict) or spec.get("kind") not in ONESHOTS:
            raise ValueError(f"next[{i}]: kind must be one of {sorted(ONESHOTS)}")
        parse, _ = ONESHOTS[spec["kind"]]
        shots.append(OneShot(spec["kind"], parse(spec)))
    return shots
