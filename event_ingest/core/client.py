"""Source client: one HTTP attempt against one source, through the gate.

Every attempt - first tries, retries, probes - is :meth:`SourceClient.fetch`: it takes a gate slot,
sends under it, and closes it when the response begins (or the attempt fails); the slot is this
function's alone, from grant to close (``gate.slot()``), and the request is held to it where it is
written (``http.py``). The client classifies what came back; the retry *policy* lives in the drain,
so there is one of it.

``https`` sources are verified against the system's certificate store (not a
bundle shipped with a Python package), or against the source's ``ca_file``.
A certificate that is not trusted is a configuration problem, not a
transient one: retrying cannot fix it. Configured header values never
appear in a reason, even when the source echoes them back in an error page.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import httpcore

from .. import __version__
from ..config import SourceConfig
from .gate import Gate, GateUnavailable, Slot
from .http import Connection, DeadlineExceeded, SlotWentStale, TransportError, header
from .page import MalformedPage, Page, Quarantined, parse_page

log = logging.getLogger(__name__)

REQUEST_STARTS_KEPT = 10_000


class Kind(Enum):
    OK = "ok"
    RETRY = "retry"  # transient: 5xx, timeout, reset, malformed body, 429/503
    FATAL = "fatal"  # retrying will not help: 4xx, redirect, bad configuration


@dataclass
class Timeline:
    """One request's moments (``time.monotonic()`` of this host, and Redis' clock in µs): what the spacing
    judge needs to explain a gap seen at the source."""

    asked: float  # the gate was asked for the slot
    granted: float  # the grant was read here
    granted_redis_us: int
    sent: float | None = None  # the request's first bytes went to the socket (None: given back unsent)
    answered: float | None = None  # the response began
    closed: float | None = None  # the slot was closed
    closed_redis_us: int | None = None
    defer_s: float = 0.0  # what the close added to the interval (Retry-After, an unanswered request)


@dataclass
class Outcome:
    kind: Kind
    page: Page | None = None
    reason: str = ""
    retry_after_s: float | None = None  # what the source asked for (capped)
    bad_body: Quarantined | None = None  # bytes that could not be read as a page
    status: int | None = None
    elapsed_s: float = 0.0
    sent: bool = True  # False: the slot went stale and the request was never sent
    body: bytes | None = None  # the 200 response's bytes as received (kept by an operator's skip)
    timeline: Timeline | None = None


class BodyTooLarge(Exception):
    pass


class UndecodableBody(Exception):
    pass


def parse_retry_after(value: str | None, cap_s: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent/unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap_s)


def tls_context(source: SourceConfig) -> ssl.SSLContext:
    """The system's trust store (httpx alone would use certifi's bundle), or only the source's ca_file."""
    return ssl.create_default_context(cafile=source.ca_file)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:  # longest first, so a token inside a longer value goes with it
        text = text.replace(secret, "***")
    return text


class SourceClient:
    """HTTP access to one source: one keep-alive connection, strict limits, every request through the gate."""

    def __init__(self, source: SourceConfig, gate: Gate) -> None:
        self.source = source
        self.gate = gate
        self.requests = 0  # requests sent by this client
        # Monotonic send times of the latest requests (the drain's gap figures); bounded, since a tailing
        # drain can live for hours.
        self.request_starts: deque[float] = deque(maxlen=REQUEST_STARTS_KEPT)
        self._secrets = source.secret_values()
        self.tls = tls_context(source)
        self._limit = f"&limit={source.page_size}"
        # Redirects are not followed (a redirect to another host is not followed blindly): 3xx is an answer.
        self._http = Connection(
            source.url,
            [
                ("User-Agent", f"event-ingest/{__version__}"),
                ("Accept", "application/json"),
                ("Accept-Encoding", "gzip, deflate"),
                *((name, h.value) for name, h in source.headers),
            ],
            self.tls,
        )

    @property
    def last_closed(self) -> float | None:
        """Monotonic time the latest response began (or attempt ended): the gate's slot was closed then."""
        return self.gate.last_closed

    def close(self) -> None:
        """Done with the source: an unused reserved slot goes back first, then the connection."""
        try:
            self.gate.give_back()
        except GateUnavailable as exc:
            log.warning("%s: reserved slot not given back, it lapses a hold from now", exc)
        finally:
            self._http.close()

    def _read_capped(self, response: httpcore.Response) -> bytes:
        """The decoded body, never more than the cap in memory, never past the request's deadline.

        Decompression is done here: inflating a whole network chunk at once, one 64 KB read of a gzip
        bomb could become ~64 MB before any cap is checked. Here each step inflates at most what the cap
        still allows. A body that dribbles forever (slowloris) meets the deadline in the next read.
        """
        cap = self.source.max_response_bytes
        encoding = (header(response, "Content-Encoding") or "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            # wbits 47 = zlib or gzip header, detected; raw deflate (rare, non-conforming) is refused.
            inflater = zlib.decompressobj(47)
        elif encoding in ("", "identity"):
            inflater = None
        else:
            raise UndecodableBody(f"Content-Encoding {encoding!r} not supported (we ask for gzip or deflate)")
        chunks: list[bytes] = []
        size = 0
        for raw in response.iter_stream():
            pending = raw
            while pending:
                if inflater is None:
                    piece, pending = pending, b""
                else:
                    try:
                        piece = inflater.decompress(pending, cap - size + 1)
                    except zlib.error as exc:
                        raise UndecodableBody(f"body cannot be decoded ({encoding}: {exc})") from None
                    pending = inflater.unconsumed_tail
                size += len(piece)
                if size > cap:
                    raise BodyTooLarge(f"response body over the {cap}-byte cap")
                chunks.append(piece)
                if not piece:
                    break
        return b"".join(chunks)

    def fetch(
        self, last_id: int, *, max_wait_s: float | None = None, should_stop: Callable[[], bool] | None = None
    ) -> Outcome | None:
        """One request for the page after ``last_id``, under a gate slot of its own; None if no slot came
        within ``max_wait_s`` (or ``should_stop()``). Raises :class:`~.gate.GateUnavailable`."""
        with self.gate.slot(max_wait_s, should_stop) as slot:
            if slot is None:
                return None
            grant = slot.grant
            timeline = Timeline(grant.asked_monotonic, grant.granted_monotonic, grant.redis_time_us)
            outcome = self._attempt(slot, last_id, timeline)
        timeline.closed, timeline.closed_redis_us = self.gate.last_closed, self.gate.last_closed_redis_us
        outcome.timeline = timeline
        if self._secrets:
            outcome.reason = redact(outcome.reason, self._secrets)
        return outcome

    def _attempt(self, slot: Slot, last_id: int, timeline: Timeline) -> Outcome:
        source = self.source
        send_by = slot.send_by()
        if time.monotonic() > send_by:
            # Paused (GC, SIGSTOP, a frozen VM) since the slot was asked for: give it back unused (closing
            # only ever moves the next slot later) and let the caller ask again. The same check runs
            # again where the request is written (http.py), for a pause after this line.
            slot.close()
            return Outcome(Kind.RETRY, reason=_STALE, sent=False)
        # Everything of this request - connect, write, the response and its body - ends within timeout_s
        # of when its slot was asked for, inside the slot's hold (timeout + interval).
        deadline = slot.grant.asked_monotonic + source.timeout_s
        started = time.monotonic()
        retry_after: float | None = None
        guard = self._http.guard
        try:
            with self._http.get(f"lastId={last_id}{self._limit}", send_by=send_by, deadline=deadline) as response:
                status = response.status
                if status in (429, 503):
                    retry_after = parse_retry_after(header(response, "Retry-After"), source.max_retry_after_s)
                # The response has begun: the request reached the source before now. Close the slot at
                # once rather than after the body, so a long body does not stretch the spacing.
                # A page is coming: the next request follows it at once, so the close reserves its slot.
                timeline.answered = time.monotonic()
                timeline.defer_s = retry_after or 0.0
                slot.close(defer_s=timeline.defer_s, reserve=status == 200)
                body = self._read_capped(response)
        except SlotWentStale as exc:
            slot.close()  # nothing was written
            return Outcome(Kind.RETRY, reason=str(exc), sent=False)
        except (BodyTooLarge, UndecodableBody, *TransportError) as exc:
            if guard.written:
                self._count_sent(started, timeline)
            if not slot.closed:
                timeline.defer_s = unanswered_defer(source, guard.written, exc)
                slot.close(defer_s=timeline.defer_s)
            if isinstance(exc, DeadlineExceeded):
                what = "response not complete" if slot.closed and timeline.answered else "no response began"
                return Outcome(
                    Kind.RETRY,
                    reason=f"timeout: {what} within {source.timeout_s:g}s",
                    elapsed_s=time.monotonic() - started,
                )
            return self._failed(exc, started)
        self._count_sent(started, timeline)
        return self._classify(status, response, body, last_id, time.monotonic() - started)

    def _count_sent(self, started: float, timeline: Timeline) -> None:
        sent = self._http.guard.written_at or started
        self.request_starts.append(sent)
        timeline.sent = sent
        self.requests += 1

    def _failed(self, exc: Exception, started: float) -> Outcome:
        source = self.source
        untrusted = _untrusted_certificate(exc)
        if untrusted is not None:
            trusted_by = f"ca_file {source.ca_file}" if source.ca_file else "the system certificate store"
            hint = "" if source.ca_file else "; if the source uses a private CA, set ca_file in the sources file"
            return Outcome(
                Kind.FATAL,
                reason=f"TLS certificate of {source.url} is not trusted by {trusted_by} ({untrusted}){hint}",
                elapsed_s=time.monotonic() - started,
            )
        return Outcome(Kind.RETRY, reason=_transport_reason(exc), elapsed_s=time.monotonic() - started)

    def _classify(self, status: int, response: httpcore.Response, body: bytes, last_id: int, elapsed: float) -> Outcome:
        source = self.source
        if status == 200:
            try:
                page = parse_page(body, cursor=last_id, max_payload_bytes=source.max_payload_bytes)
            except MalformedPage as exc:
                return Outcome(
                    Kind.RETRY,
                    reason=f"malformed page: {exc}",
                    status=status,
                    elapsed_s=elapsed,
                    bad_body=Quarantined(body, f"malformed page at lastId={last_id}: {exc}"),
                    body=body,
                )
            return Outcome(Kind.OK, page=page, status=status, elapsed_s=elapsed, body=body)
        if status in (429, 503):
            retry_after = parse_retry_after(header(response, "Retry-After"), source.max_retry_after_s)
            told = f"Retry-After {retry_after:g}s" if retry_after is not None else "no Retry-After"
            return Outcome(
                Kind.RETRY,
                reason=f"HTTP {status} ({told})",
                retry_after_s=retry_after,
                status=status,
                elapsed_s=elapsed,
            )
        if status >= 500 or status == 408:
            return Outcome(Kind.RETRY, reason=f"HTTP {status}{_error_hint(body)}", status=status, elapsed_s=elapsed)
        if 300 <= status < 400:
            where = header(response, "Location") or "?"
            return Outcome(
                Kind.FATAL,
                reason=f"HTTP {status} redirect to {where!r} not followed; fix the source url",
                status=status,
                elapsed_s=elapsed,
            )
        return Outcome(Kind.FATAL, reason=f"HTTP {status}{_error_hint(body)}", status=status, elapsed_s=elapsed)


_STALE = "gate slot went stale before sending (process paused?); not sent"


def unanswered_defer(source: SourceConfig, written: bool, exc: BaseException) -> float:
    """What the close of an attempt that got no response adds to the interval.

    If any byte of the request was written, nothing proves it did not reach the source: whatever the
    failure (a timeout, a reset, a broken response), it may wait in a queue or a busy server's backlog
    and be read later. The next slot then waits one more request's life, so even a request read that
    late keeps its distance. Nothing written (connection refused, the slot gone stale): the interval.
    """
    return source.timeout_s + source.min_interval_s if written else 0.0


def _untrusted_certificate(exc: BaseException) -> str | None:
    """What the TLS layer said, if the failure was a certificate it could not verify."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # httpx -> httpcore -> ssl
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause.verify_message or cause.reason or "certificate verify failed"
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _transport_reason(exc: Exception) -> str:
    if isinstance(exc, (BodyTooLarge, UndecodableBody)):
        return str(exc)
    if isinstance(exc, httpcore.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    return f"connection error ({type(exc).__name__}: {exc})"


def _error_hint(body: bytes) -> str:
    # The hint goes into a log line: a CR would forge a second line, ESC sequences would drive the
    # reader's terminal, NUL truncates some viewers. Anything not printable becomes a space.
    text = "".join(c if c.isprintable() else " " for c in body[:200].decode("utf-8", "replace"))
    text = " ".join(text.split())
    return f": {text}" if text else ""
