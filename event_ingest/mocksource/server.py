"""Mock event source: an HTTP server that speaks the event-source protocol.

Protocol served (same as every real source)::

    GET /events?lastId=N&limit=M  ->  200 {"events": [{"id": int, "payload": ...}, ...]}

events with id > N in ascending order, at most M; missing lastId means 0 and an
empty list means "nothing new".

Besides serving events, the mock is the *judge* of the project's politeness
rule (no source may get two requests less than ``min_interval_ms`` apart,
start to start): every /events request's arrival is stamped with
``time.monotonic()`` before anything else happens and ``GET /stats`` reports the
gaps. It also records which event ids were really served so a chaos harness can
compare them with what ended up stored, and the lastId each request asked for
(``last_ids`` in ``GET /stats?ids=1``), so a test sees where a consumer reads from.

Faults (random errors, 429s, malformed bodies, latency) come from the config
and can be changed on a running server with ``POST /control``; ``POST /control
{"next": [...]}`` queues exact one-shot responses (see ``ONESHOT_KINDS``).

With ``tls_cert_file``/``tls_key_file`` it serves HTTPS, and ``/stats`` shows
the headers of the latest /events request (``last_request_headers``), so a test
can see on the source's side what a client sent.

Stdlib only, so it can run anywhere the tests, dev stack or benchmarks do.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import json
import logging
import math
import random
import re
import signal
import socket
import socketserver
import ssl
import statistics
import struct
import sys
import threading
import time
import zlib
from array import array
from collections import Counter, deque
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Callable, Mapping, Sequence, TextIO, cast
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ONESHOT_KINDS",
    "MockSource",
    "MockSourceConfig",
    "add_arguments",
    "config_from_args",
    "main",
    "run_from_args",
    "serve_forever",
]

log = logging.getLogger(__name__)

# Ids are stored as BIGINT downstream; refusing larger cursors keeps seed mode
# from ever emitting ids no consumer could store.
_MAX_ID = 2**63 - 1
# Cap on POST bodies: big enough for base64 one-shot bodies, small enough that
# a runaway harness cannot exhaust memory.
_MAX_POST_BYTES = 32 * 1024 * 1024
_JSON = "application/json"


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def _check_rate(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number between 0 and 1")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{key} must be between 0 and 1, got {value!r}")
    return float(value)


def _check_non_negative(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a non-negative number")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    return float(value)


def _check_non_negative_int(key: str, value: Any) -> int:
    # Retry-After is delta-seconds in HTTP, which is an integer.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def _check_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key} must be true or false, got {value!r}")


def _check_seed(key: str, value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{key} must be an integer or null, got {value!r}")


# Settings that may be changed on a running server via POST /control, with the
# validator used both for the config and for /control so the two cannot drift.
_RUNTIME_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "error_rate": _check_rate,
    "rate_limit_rate": _check_rate,
    "malformed_rate": _check_rate,
    "latency_ms": _check_non_negative,
    "retry_after_s": _check_non_negative_int,
    "min_interval_ms": _check_non_negative,
    "producing": _check_bool,
}


@dataclass
class MockSourceConfig:
    """Everything a mock source needs at start-up.

    Modes: ``backlog`` and ``rate`` combine (ids 1..backlog exist at start, the
    producer appends more); ``seed_batch`` is the original PHP mocks' endless
    stream and excludes the other two.
    """

    name: str = "mock"
    host: str = "127.0.0.1"
    port: int = 0  # 0 = let the OS pick a free port
    backlog: int = 0  # ids 1..backlog exist at start
    rate: float = 0.0  # live producer, events per second (0 = off)
    producing: bool = True  # live producer running (pause with /control {"producing": false})
    seed_batch: int | None = None  # seed mode: every answer is exactly K new events
    error_rate: float = 0.0  # fraction of /events answered 500
    latency_ms: float = 0.0  # added before answering each /events request
    rate_limit_rate: float = 0.0  # fraction answered 429 + Retry-After
    retry_after_s: int = 1  # Retry-After value on those 429s
    malformed_rate: float = 0.0  # fraction answered 200 with truncated JSON
    random_seed: int | None = None  # seeds fault decisions, for reproducible runs
    min_interval_ms: float = 200.0  # recorder threshold for "too close" gaps
    max_limit: int = 10_000  # larger ?limit= values are capped to this
    tls_cert_file: str | None = None  # PEM certificate (chain): serve HTTPS
    tls_key_file: str | None = None  # its private key

    def validate(self) -> None:
        """Raise ValueError describing the first invalid field."""
        if not self.name:
            raise ValueError("name must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.backlog < 0 or self.backlog > _MAX_ID:
            raise ValueError(f"backlog must be >= 0, got {self.backlog}")
        _check_non_negative("rate", self.rate)
        if self.seed_batch is not None:
            if self.seed_batch < 1:
                raise ValueError(f"seed_batch must be >= 1, got {self.seed_batch}")
            if self.backlog or self.rate:
                # Seed mode invents events from the client's cursor, so a backlog
                # or producer would be silently ignored: refuse instead.
                raise ValueError("seed_batch cannot be combined with backlog or rate")
        if self.max_limit < 1:
            raise ValueError(f"max_limit must be >= 1, got {self.max_limit}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        for key, check in _RUNTIME_FIELDS.items():
            check(key, getattr(self, key))
        _check_seed("random_seed", self.random_seed)
        _RuntimeSettings.from_config(self).check_total()


@dataclass(frozen=True)
class _RuntimeSettings:
    """The mutable-at-runtime part of the config (swapped atomically)."""

    error_rate: float
    rate_limit_rate: float
    malformed_rate: float
    latency_ms: float
    retry_after_s: int
    min_interval_ms: float
    producing: bool

    @classmethod
    def from_config(cls, config: MockSourceConfig) -> _RuntimeSettings:
        return cls(**{key: getattr(config, key) for key in _RUNTIME_FIELDS})

    def check_total(self) -> None:
        # One random draw per request picks at most one fault, so the fractions
        # are exact only if they fit in [0, 1] together.
        total = self.error_rate + self.rate_limit_rate + self.malformed_rate
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"error_rate + rate_limit_rate + malformed_rate must be <= 1, got {total:g}"
            )


# --------------------------------------------------------------------------
# Event store
# --------------------------------------------------------------------------


class _EventStore:
    """Ids are consecutive, so only creation times are stored (8 bytes/event).

    Backlog events share the start time and are never materialised, which keeps
    a multi-million-event backlog for benchmarks cheap.

    Live events (``rate`` per second) are made when someone looks, not by a thread:
    event k of a producing stretch is created at stretch start + k / rate, and
    exists for every request that arrives after that moment. Exact times, no drift,
    and a fleet of mocks costs nothing while nobody asks.
    """

    def __init__(self, name: str, backlog: int, seed_batch: int | None, rate: float = 0.0,
                 producing: Callable[[], bool] = lambda: True) -> None:
        self._name = name
        self._backlog = backlog
        self._seed_batch = seed_batch
        self._started_at = time.time()
        self._live = array("d")
        self._lock = threading.Lock()
        self._rate = rate
        self._producing = producing
        self._stretch_start: float | None = self._started_at if rate > 0 else None  # None: paused
        self._stretch_made = 0  # events made in the current stretch

    def _catch_up(self) -> None:
        """Make every event due by now (call with the lock held)."""
        if self._rate <= 0:
            return
        now = time.time()
        if not self._producing():
            if self._stretch_start is not None:
                self._make_due(now)
                self._stretch_start = None  # paused: a resume starts a new stretch, with no burst
            return
        if self._stretch_start is None:
            self._stretch_start, self._stretch_made = now, 0
        self._make_due(now)

    def _make_due(self, now: float) -> None:
        due = int((now - self._stretch_start) * self._rate)
        if due > self._stretch_made:
            start, rate = self._stretch_start, self._rate
            self._live.extend(start + k / rate for k in range(self._stretch_made + 1, due + 1))
            self._stretch_made = due

    def settle(self) -> None:
        """Make what is due now under the current producing state (before and after it changes)."""
        with self._lock:
            self._catch_up()

    def max_id(self) -> int | None:
        """Highest existing id; None in seed mode, where ids are invented on demand."""
        if self._seed_batch is not None:
            return None
        with self._lock:
            self._catch_up()
            return self._backlog + len(self._live)

    def append(self, count: int) -> None:
        now = time.time()
        with self._lock:
            self._catch_up()
            self._live.extend([now] * count)

    def query(self, last_id: int, limit: int) -> list[dict[str, Any]]:
        if self._seed_batch is not None:
            # The PHP mocks answered exactly K events after any cursor,
            # whatever limit said; reproduce that faithfully.
            now = time.time()
            first = last_id + 1
            last = min(last_id + self._seed_batch, _MAX_ID)
            return [self._event(i, now) for i in range(first, last + 1)]
        with self._lock:
            self._catch_up()
            last = min(self._backlog + len(self._live), last_id + limit)
            created = [
                self._started_at if i <= self._backlog else self._live[i - self._backlog - 1]
                for i in range(last_id + 1, last + 1)
            ]
        return [self._event(last_id + 1 + n, t) for n, t in enumerate(created)]

    def _event(self, event_id: int, created_at: float) -> dict[str, Any]:
        return {
            "id": event_id,
            "payload": {"created_at": created_at, "source": self._name, "seq": event_id},
        }


# --------------------------------------------------------------------------
# Recorder
# --------------------------------------------------------------------------


class _Recorder:
    """What the source saw: arrivals, statuses, faults and served ids."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrivals: list[float] = []
        self._statuses: Counter[int] = Counter()
        self._faults: Counter[str] = Counter()
        # Count per id rather than a set: a failed write must undo only its own
        # contribution when another response carried the same id successfully.
        self._served: Counter[int] = Counter()
        self._last_headers: dict[str, str] = {}
        self._last_ids: list[int] = []  # the lastId of each /events request read, in order

    def arrival(self, at: float) -> None:
        with self._lock:
            self._arrivals.append(at)

    def status(self, code: int) -> None:
        with self._lock:
            self._statuses[code] += 1

    def request_headers(self, headers: Mapping[str, str]) -> None:
        with self._lock:
            self._last_headers = dict(headers)

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def last_id(self, value: int) -> None:
        with self._lock:
            self._last_ids.append(value)

    def served(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._served.update(ids)

    def unserved(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._served.subtract(ids)
            for i in ids:
                if self._served[i] <= 0:
                    del self._served[i]

    def reset(self) -> None:
        with self._lock:
            self._arrivals.clear()
            self._statuses.clear()
            self._faults.clear()
            self._served.clear()
            self._last_headers = {}
            self._last_ids.clear()

    def snapshot(self, min_interval_ms: float, include_ids: bool, include_arrivals: bool = False) -> dict[str, Any]:
        with self._lock:
            # Handler threads append in the order they got the lock, which may
            # differ from arrival order by microseconds: sort before diffing.
            arrivals = sorted(self._arrivals)
            statuses = {str(k): v for k, v in sorted(self._statuses.items())}
            faults = dict(sorted(self._faults.items()))
            served = sorted(self._served)
            last_headers = dict(self._last_headers)
            last_ids = list(self._last_ids)
        gaps = [(b - a) * 1000.0 for a, b in zip(arrivals, arrivals[1:])]
        stats: dict[str, Any] = {
            "requests": len(arrivals),
            # First to last arrival: the span a rate at the source is measured over.
            "arrival_span_s": round(arrivals[-1] - arrivals[0], 6) if len(arrivals) > 1 else None,
            "min_gap_ms": round(min(gaps), 3) if gaps else None,
            "median_gap_ms": round(statistics.median(gaps), 3) if gaps else None,
            # Named after the project rule; the threshold is min_interval_ms
            # (reported alongside) and is 200 unless configured otherwise.
            "gaps_under_200ms": sum(1 for g in gaps if g < min_interval_ms),
            "min_interval_ms": min_interval_ms,
            "statuses": statuses,
            "faults": faults,
            "served_ids_count": len(served),
            "served_max_id": served[-1] if served else None,
            "last_request_headers": last_headers,
        }
        if include_ids:
            stats["served_ids"] = served
            stats["last_ids"] = last_ids
        if include_arrivals:
            # time.monotonic() of this host; "clock" turns them into wall time (wall - monotonic).
            stats["arrivals"] = arrivals
            stats["clock"] = {"monotonic": time.monotonic(), "wall": time.time()}
        return stats


# --------------------------------------------------------------------------
# One-shot responses (POST /control {"next": [...]})
# --------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class _SpecReader:
    """Typed access to one one-shot spec.

    Unknown keys are rejected so a typo in a chaos test fails loudly at
    POST /control instead of silently sending a default response.
    """

    def __init__(self, spec: Mapping[str, Any], allowed: set[str]) -> None:
        unknown = set(spec) - allowed - {"kind"}
        if unknown:
            raise ValueError(f"{spec.get('kind')}: unknown keys {sorted(unknown)}")
        self._spec = spec
        self._kind = spec.get("kind")

    def _fail(self, key: str, what: str) -> ValueError:
        return ValueError(f"{self._kind}.{key} must be {what}")

    def get_int(self, key: str, default: int | None, lo: int, hi: int) -> int:
        value = self._spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._fail(key, f"an integer in {lo}..{hi}")
        return value

    def get_number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self._spec.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not lo <= value <= hi
        ):
            raise self._fail(key, f"a number in {lo:g}..{hi:g}")
        return float(value)

    def get_str(self, key: str, default: str | None) -> str | None:
        value = self._spec.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        value = self._spec.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def get_body(self) -> bytes | None:
        """``body`` (a string, sent UTF-8) or ``body_b64`` (exact bytes)."""
        if "body" in self._spec and "body_b64" in self._spec:
            raise ValueError(f"{self._kind}: give body or body_b64, not both")
        text = self.get_str("body", None)
        if text is not None:
            return text.encode("utf-8")
        encoded = self.get_str("body_b64", None)
        if encoded is None:
            return None
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise self._fail("body_b64", f"valid base64 ({exc})") from exc

    def get_headers(self) -> list[tuple[str, str]]:
        """A dict, or a list of [name, value] pairs (allows duplicate headers)."""
        raw = self._spec.get("headers", {})
        if isinstance(raw, dict):
            pairs = list(raw.items())
        elif isinstance(raw, list) and all(isinstance(p, list) and len(p) == 2 for p in raw):
            pairs = [(p[0], p[1]) for p in raw]
        else:
            raise self._fail("headers", "an object or a list of [name, value] pairs")
        headers: list[tuple[str, str]] = []
        for name, value in pairs:
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                raise self._fail("headers", f"valid header names, got {name!r}")
            value = str(value)
            # CR/LF would let a spec splice extra lines into the response;
            # hostile framing belongs in explicit, reviewed kinds instead.
            if "\r" in value or "\n" in value:
                raise self._fail("headers", "free of CR/LF")
            headers.append((name, value))
        return headers


def _has_header(headers: Sequence[tuple[str, str]], name: str) -> bool:
    return any(k.lower() == name for k, _ in headers)


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
        {"status", "headers", "body", "body_b64", "content_type", "content_encoding",
         "omit_content_length"},
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


# --------------------------------------------------------------------------
# Shared server state
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _OneShot:
    kind: str
    params: dict[str, Any]


class _Faults:
    """Runtime settings, the seeded RNG and the one-shot queue, under one lock."""

    def __init__(self, config: MockSourceConfig) -> None:
        self._initial = _RuntimeSettings.from_config(config)
        self._initial_seed = config.random_seed
        self._settings = self._initial
        self._rng = random.Random(config.random_seed)
        self._queue: deque[_OneShot] = deque()
        self._lock = threading.Lock()

    @property
    def settings(self) -> _RuntimeSettings:
        return self._settings  # immutable snapshot; swapped whole under the lock

    def pop_next(self) -> _OneShot | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def draw(self) -> str | None:
        """Pick at most one random fault for this request.

        A single draw per request (always consumed, even at rate 0) keeps runs
        with the same seed and request order reproducible.
        """
        with self._lock:
            s = self._settings
            roll = self._rng.random()
        for kind, rate in (
            ("error", s.error_rate),
            ("rate_limit", s.rate_limit_rate),
            ("malformed", s.malformed_rate),
        ):
            if roll < rate:
                return kind
            roll -= rate
        return None

    def control(self, changes: Mapping[str, Any]) -> None:
        """Apply a POST /control body: everything is validated before anything
        changes, so a bad request leaves the server as it was."""
        allowed = set(_RUNTIME_FIELDS) | {"seed", "random_seed", "next", "clear_next", "reset"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown control keys {sorted(unknown)}")
        updates = {k: check(k, changes[k]) for k, check in _RUNTIME_FIELDS.items() if k in changes}
        if "seed" in changes and "random_seed" in changes:
            raise ValueError("give seed or random_seed, not both")
        seed_key = "seed" if "seed" in changes else "random_seed"
        reseed = seed_key in changes
        seed = _check_seed(seed_key, changes.get(seed_key))
        for flag in ("clear_next", "reset"):
            if not isinstance(changes.get(flag, False), bool):
                raise ValueError(f"{flag} must be true or false")
        shots = _parse_oneshots(changes.get("next", []))
        with self._lock:
            base = self._initial if changes.get("reset") else self._settings
            settings = replace(base, **updates)
            settings.check_total()
            if changes.get("reset"):
                self._queue.clear()
                self._rng.seed(self._initial_seed)
            if changes.get("clear_next"):
                self._queue.clear()
            self._settings = settings
            if reseed:
                self._rng.seed(seed)
            self._queue.extend(shots)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"settings": asdict(self._settings), "queued": [s.kind for s in self._queue]}


def _parse_oneshots(raw: Any) -> list[_OneShot]:
    if not isinstance(raw, list):
        raise ValueError("next must be a list of {\"kind\": ...} objects")
    shots = []
    for i, spec in enumerate(raw):
        if not isinstance(spec, dict) or spec.get("kind") not in _ONESHOTS:
            raise ValueError(f"next[{i}]: kind must be one of {sorted(_ONESHOTS)}")
        parse, _ = _ONESHOTS[spec["kind"]]
        shots.append(_OneShot(spec["kind"], parse(spec)))
    return shots


class _SourceState:
    """Everything the handler threads share for one running source."""

    def __init__(self, config: MockSourceConfig) -> None:
        self.config = config
        self.store = _EventStore(config.name, config.backlog, config.seed_batch, config.rate,
                                 lambda: self.faults.settings.producing)
        self.faults = _Faults(config)
        self.recorder = _Recorder()
        # Set on stop: wakes handlers sleeping in latency/delay/slowloris.
        self.stopping = threading.Event()

    def control(self, changes: Mapping[str, Any]) -> None:
        # Events due before a pause (or a resume) exist; none are made for the time in between.
        self.store.settle()
        self.faults.control(changes)
        self.store.settle()

    def stats(self, include_ids: bool, include_arrivals: bool = False) -> dict[str, Any]:
        stats = self.recorder.snapshot(self.faults.settings.min_interval_ms, include_ids, include_arrivals)
        stats["name"] = self.config.name
        stats["produced_max_id"] = self.store.max_id()
        return stats


# --------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], state: _SourceState) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.tls: ssl.SSLContext | None = None
        if state.config.tls_cert_file is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(state.config.tls_cert_file, state.config.tls_key_file)
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        if self.tls is not None:
            # The handshake runs in the handler's thread (setup), not in the accept loop, so one
            # client that never completes it cannot hold up the others.
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse-DNS lookup (getfqdn), which can
        # stall start-up for seconds in sandboxes; the name is never used.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(conn)

    def close_connections(self) -> None:
        """Unblock handler threads idling on keep-alive connections."""
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response is routine here (timeouts, chaos
        # tests); anything else is a bug worth seeing.
        exc = sys.exc_info()[1]
        # ssl.SSLError: a client that does not trust the certificate hangs up in the handshake.
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)) or self.state.stopping.is_set():
            return
        log.exception("mock source %s: error handling request", self.state.config.name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real sources
    server_version = "mocksource/1"
    sys_version = ""
    # Headers and body are separate writes; with Nagle on, the body waits for
    # the client's delayed ACK (~40 ms), which would distort every latency the
    # project measures against this mock.
    disable_nagle_algorithm = True

    # Set per request; True while answering /events so statuses get recorded.
    _is_events = False

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    @property
    def _state(self) -> _SourceState:
        return self._server.state

    # ---- plumbing ---------------------------------------------------------

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()
        self._server.track(self.connection, alive=True)

    def finish(self) -> None:
        self._server.track(self.connection, alive=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and benchmarks would drown in per-request lines

    def send_response(self, code: int, message: str | None = None) -> None:
        if self._is_events:
            self._state.recorder.status(code)
        super().send_response(code, message)

    def _send(
        self,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str, str]] = (("Content-Type", _JSON),),
        *,
        omit_content_length: bool = False,
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        framed_by_caller = _has_header(headers, "content-length") or _has_header(
            headers, "transfer-encoding"
        )
        if not framed_by_caller and not omit_content_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            # The body's framing is whatever the fault says, possibly a lie, so
            # this connection cannot safely carry another response.
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        self._send(status, json.dumps(obj).encode(), [("Content-Type", _JSON), *headers])

    def _read_json_body(self) -> Any:
        """The request body as JSON ({} if empty); ValueError if unusable."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # cannot resync a chunked body we skip
            raise ValueError("send the body with Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise ValueError("bad Content-Length") from None
        if not 0 <= length <= _MAX_POST_BYTES:
            self.close_connection = True
            raise ValueError(f"body must be at most {_MAX_POST_BYTES} bytes")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"body is not valid JSON: {exc}") from None

    # ---- routes -----------------------------------------------------------

    def do_GET(self) -> None:
        # Stamp first, before parsing or any injected latency: this is the
        # instant the politeness rule is judged on.
        arrived = time.monotonic()
        url = urlsplit(self.path)
        if url.path == "/events":
            self._state.recorder.arrival(arrived)
            self._state.recorder.request_headers(self.headers)
            self._is_events = True
            try:
                self._events(url.query)
            finally:
                self._is_events = False
        elif url.path == "/health":
            self._send_json(200, {"ok": True, "name": self._state.config.name})
        elif url.path == "/stats":
            query = parse_qs(url.query)
            flag = lambda name: query.get(name, ["0"])[-1] not in ("0", "", "false")  # noqa: E731
            self._send_json(200, self._state.stats(flag("ids"), flag("arrivals")))
        elif url.path == "/control":
            self._send_json(200, {"ok": True, **self._state.faults.describe()})
        else:
            self._send_json(404, {"error": f"no such path: {url.path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            body = self._read_json_body()
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})
            return
        if path == "/control":
            try:
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                self._state.control(body)
            except ValueError as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, {"ok": True, **self._state.faults.describe()})
        elif path == "/stats/reset":
            self._state.recorder.reset()
            self._send_json(200, {"ok": True})
        elif path == "/events":
            self._send_json(405, {"error": "use GET"}, [("Allow", "GET")])
        else:
            self._send_json(404, {"error": f"no such path: {path}"})

    # ---- /events ----------------------------------------------------------

    def _events(self, query: str) -> None:
        state = self._state
        shot = state.faults.pop_next()
        if shot is not None:
            state.recorder.fault(shot.kind)
            _, act = _ONESHOTS[shot.kind]
            if not act(self, shot.params):
                return

        settings = state.faults.settings
        if settings.latency_ms > 0:
            state.recorder.fault("latency")
            if state.stopping.wait(settings.latency_ms / 1000.0):
                self.close_connection = True
                return

        try:
            last_id, limit = self._parse_cursor(query)
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})
            return
        state.recorder.last_id(last_id)

        fault = state.faults.draw()
        if fault == "error":
            state.recorder.fault("error")
            self._send_json(500, {"error": "injected internal error"})
            return
        if fault == "rate_limit":
            state.recorder.fault("rate_limit")
            self._send_json(
                429, {"error": "rate limited"}, [("Retry-After", str(settings.retry_after_s))]
            )
            return

        events = state.store.query(last_id, limit)
        body = json.dumps({"events": events}).encode()
        if fault == "malformed":
            state.recorder.fault("malformed")
            # Truncated JSON with an honest Content-Length: the HTTP layer is
            # fine, only the body parser should complain.
            self._send(200, body[: max(1, len(body) // 2)])
            return
        self._send_events(body, [e["id"] for e in events])

    def _send_events(self, body: bytes, ids: list[int]) -> None:
        # Recorded before writing so /stats never lags a response the client
        # already has; undone if the write fails.
        self._state.recorder.served(ids)
        try:
            self._send(200, body)
        except OSError:
            self._state.recorder.unserved(ids)
            raise

    def _parse_cursor(self, query: str) -> tuple[int, int]:
        params = parse_qs(query, keep_blank_values=True)
        max_limit = self._state.config.max_limit

        def one(key: str, default: int) -> int:
            values = params.get(key)
            if values is None:
                return default
            if len(values) != 1:
                raise ValueError(f"{key} given more than once")
            # ASCII digits only: int() would also accept "+5", " 5", "5_0"
            # and non-ASCII digits, which a real source would not.
            if not re.fullmatch(r"[0-9]{1,19}", values[0]):
                raise ValueError(f"{key} must be a non-negative integer, got {values[0]!r}")
            return int(values[0])

        last_id = one("lastId", 0)
        if last_id > _MAX_ID:
            raise ValueError("lastId out of range")
        limit = one("limit", max_limit)
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return last_id, min(limit, max_limit)


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
_Act = Callable[[_Handler, dict[str, Any]], bool]  # True = continue normal handling

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


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


class MockSource:
    """A mock source running in background threads.

    ``with MockSource(MockSourceConfig(backlog=100)) as src: httpx.get(src.url)``
    """

    def __init__(self, config: MockSourceConfig | None = None) -> None:
        self.config = config if config is not None else MockSourceConfig()
        self.config.validate()
        self._state: _SourceState | None = None
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> MockSource:
        if self._state is not None:
            raise RuntimeError("MockSource already started (sources are not restartable)")
        state = _SourceState(self.config)
        server = _Server((self.config.host, self.config.port), state)
        self._state, self._server = state, server
        serve = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() returns within ~50 ms
            name=f"mocksource-{self.config.name}",
            daemon=True,
        )
        self._threads = [serve]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call more than once."""
        if self._server is None or self._state is None or self._state.stopping.is_set():
            return
        self._state.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> MockSource:
        if self._state is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _running(self) -> tuple[_SourceState, _Server]:
        if self._state is None or self._server is None:
            raise RuntimeError("MockSource not started")
        return self._state, self._server

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def host(self) -> str:
        """Host to connect to (a wildcard bind is reached via loopback)."""
        host = self.config.host
        if host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if host == "::":
            return "::1"
        return host

    @property
    def port(self) -> int:
        return self._running()[1].server_port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.config.tls_cert_file else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The events endpoint, e.g. ``http://127.0.0.1:PORT/events``."""
        return f"{self.base_url}/events"

    def stats(self, include_ids: bool = False, include_arrivals: bool = False) -> dict[str, Any]:
        """Same as ``GET /stats`` (``?ids=1`` when include_ids, ``?arrivals=1`` for the arrival times)."""
        return self._running()[0].stats(include_ids, include_arrivals)

    def reset_stats(self) -> None:
        """Same as ``POST /stats/reset``."""
        self._running()[0].recorder.reset()

    def control(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Same as ``POST /control``; raises ValueError where HTTP would 400."""
        state = self._running()[0]
        state.control(changes)
        return state.faults.describe()

    def describe(self) -> str:
        """The one-line start-up banner."""
        c = self.config
        return (
            f"mock source {c.name} listening on {self.url} "
            f"(backlog={c.backlog}, rate={c.rate:g}/s, "
            f"seed_batch={c.seed_batch if c.seed_batch is not None else 'off'}, "
            f"error_rate={c.error_rate:g}, latency_ms={c.latency_ms:g}, "
            f"rate_limit_rate={c.rate_limit_rate:g}, retry_after_s={c.retry_after_s}, "
            f"malformed_rate={c.malformed_rate:g}, random_seed={c.random_seed})"
        )


def serve_forever(config: MockSourceConfig, out: TextIO | None = None) -> None:
    """Run a source until SIGINT/SIGTERM, printing the banner line first."""
    stop = threading.Event()
    source = MockSource(config).start()
    try:
        print(source.describe(), file=out or sys.stdout, flush=True)
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                stop.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            # Short waits so the signal handler is run promptly on every platform.
            while not stop.wait(0.2):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        source.stop()


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mock-source options (dest names match MockSourceConfig fields)."""
    parser.add_argument("--name", required=True, help="source name (in payloads and /health)")
    parser.add_argument("--port", type=int, required=True, help="TCP port, 0 = pick a free one")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--backlog", type=int, default=0, metavar="N",
                        help="ids 1..N exist at start")
    parser.add_argument("--rate", type=float, default=0.0, metavar="R",
                        help="live producer: R new events per second")
    parser.add_argument("--seed-batch", type=int, default=None, metavar="K",
                        help="seed mode: every response is exactly K new events after lastId")
    parser.add_argument("--error-rate", type=float, default=0.0, metavar="F",
                        help="fraction of /events answered 500")
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="MS",
                        help="delay added before every /events answer")
    parser.add_argument("--rate-limit-rate", type=float, default=0.0, metavar="F",
                        help="fraction of /events answered 429")
    parser.add_argument("--retry-after", dest="retry_after_s", type=int, default=1, metavar="S",
                        help="Retry-After seconds on 429s (default 1)")
    parser.add_argument("--malformed-rate", type=float, default=0.0, metavar="F",
                        help="fraction of /events answered 200 with truncated JSON")
    parser.add_argument("--random-seed", type=int, default=None, metavar="N",
                        help="seed for fault decisions (reproducible runs)")
    parser.add_argument("--min-interval-ms", type=float, default=200.0, metavar="MS",
                        help="recorder threshold for too-close requests (default 200)")
    parser.add_argument("--tls-cert", dest="tls_cert_file", default=None, metavar="PEM",
                        help="serve HTTPS with this certificate (chain)")
    parser.add_argument("--tls-key", dest="tls_key_file", default=None, metavar="PEM",
                        help="the certificate's private key")


def config_from_args(args: argparse.Namespace) -> MockSourceConfig:
    """Build and validate a config from parsed add_arguments() options."""
    config = MockSourceConfig(
        name=args.name,
        host=args.host,
        port=args.port,
        backlog=args.backlog,
        rate=args.rate,
        seed_batch=args.seed_batch,
        error_rate=args.error_rate,
        latency_ms=args.latency_ms,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_s=args.retry_after_s,
        malformed_rate=args.malformed_rate,
        random_seed=args.random_seed,
        min_interval_ms=args.min_interval_ms,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
    )
    config.validate()
    return config


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until signalled; returns a process exit code."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"mock source: error: {exc}", file=sys.stderr)
        return 2
    try:
        serve_forever(config)
    except OSError as exc:  # typically: port already in use
        print(f"mock source {config.name}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m event_ingest.mocksource",
        description="Mock HTTP event source for tests, dev stack, benchmarks and chaos runs.",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
