"""Source client: one HTTP attempt against one source, through the gate.

Every attempt - first tries, retries, probes - takes a gate slot right before
it is sent and closes it when the response (or the failure) comes back. The
client classifies what came back; the retry *policy* lives in the drain, so
there is one of it.

``https`` sources are verified against the system's certificate store (not a
bundle shipped with a Python package), or against the source's ``ca_file``.
A certificate that is not trusted is a configuration problem, not a
transient one: retrying cannot fix it. Configured header values never
appear in a reason, even when the source echoes them back in an error page.
"""

from __future__ import annotations

import email.utils
import ssl
import time
import zlib
from collections import deque
from dataclasses import dataclass
from enum import Enum

import httpx

from .. import __version__
from ..config import SourceConfig
from .gate import Gate, Grant
from .page import MalformedPage, Page, Quarantined, parse_page

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
    sent: float | None = None  # the request was handed to HTTP (None: given back unsent)
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


class DeadlineExceeded(Exception):
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
    """HTTP access to one source: one connection pool, strict limits, all through the gate."""

    def __init__(self, source: SourceConfig, gate: Gate, *, transport: httpx.BaseTransport | None = None) -> None:
        self.source = source
        self.gate = gate
        self.requests = 0  # requests sent by this client
        # Monotonic send times of the latest requests (the drain's gap figures); bounded, since a tailing
        # drain can live for hours.
        self.request_starts: deque[float] = deque(maxlen=REQUEST_STARTS_KEPT)
        self._secrets = source.secret_values()
        self.tls = tls_context(source)
        self._http = httpx.Client(
            # httpx gives connect, write and pool a full timeout each; a third each keeps the moment
            # the request reaches the source within timeout_s of sending, inside the gate's hold.
            timeout=httpx.Timeout(
                source.timeout_s, connect=source.timeout_s / 3, write=source.timeout_s / 3, pool=source.timeout_s / 3
            ),
            follow_redirects=False,  # a redirect to another host is not followed blindly
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers={
                "User-Agent": f"event-ingest/{__version__}",
                "Accept": "application/json",
                "Accept-Encoding": "gzip, deflate",
                **{name: h.value for name, h in source.headers},
            },
            verify=self.tls,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def _read_capped(self, response: httpx.Response, deadline: float) -> bytes:
        """The decoded body, never more than the cap in memory, never past the deadline.

        Decompression is done here, not by httpx: httpx inflates a whole network chunk at once, so
        one 64 KB read of a gzip bomb could become ~64 MB before any cap is checked. Here each
        step inflates at most what the cap still allows.
        """
        cap = self.source.max_response_bytes
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            # wbits 47 = zlib or gzip header, detected; raw deflate (rare, non-conforming) is refused.
            inflater = zlib.decompressobj(47)
        elif encoding in ("", "identity"):
            inflater = None
        else:
            raise UndecodableBody(f"Content-Encoding {encoding!r} not supported (we ask for gzip or deflate)")
        chunks: list[bytes] = []
        size = 0
        for raw in response.iter_raw():
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
            if time.monotonic() > deadline:
                # A body that dribbles forever (slowloris) never trips the per-read timeout.
                raise DeadlineExceeded(f"response not complete within {self.source.timeout_s}s")
        return b"".join(chunks)

    def attempt(self, grant: Grant, last_id: int) -> Outcome:
        """Send one request (the caller holds ``grant``) and classify the answer. Closes the gate slot."""
        timeline = Timeline(grant.asked_monotonic, grant.granted_monotonic, grant.redis_time_us)
        outcome = self._attempt(grant, last_id, timeline)
        timeline.closed, timeline.closed_redis_us = self.gate.last_closed, self.gate.last_closed_redis_us
        outcome.timeline = timeline
        if self._secrets:
            outcome.reason = redact(outcome.reason, self._secrets)
        return outcome

    def _attempt(self, grant: Grant, last_id: int, timeline: Timeline) -> Outcome:
        source = self.source
        params = {"lastId": last_id, "limit": source.page_size}
        started = time.monotonic()
        if started - grant.granted_monotonic > source.min_interval_s / 2:
            # Paused (GC, SIGSTOP, a frozen VM) between the grant and here: the reservation lasts
            # timeout + interval, and a request sent this late might land after it expired and
            # another consumer's slot began. Give the slot back unused (closing only ever moves the
            # next slot later) and let the caller ask again. Sending takes microseconds after this.
            self.gate.close()
            return Outcome(
                Kind.RETRY, reason="gate slot went stale before sending (process paused?); not sent", sent=False
            )
        self.request_starts.append(started)
        timeline.sent = started
        self.requests += 1
        deadline = started + source.timeout_s
        retry_after: float | None = None
        closed = False
        try:
            with self._http.stream("GET", source.url, params=params) as response:
                status = response.status_code
                if status in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), source.max_retry_after_s)
                # The response has begun: the request reached the source before now. Close the slot at
                # once rather than after the body, so a long body does not stretch the spacing.
                timeline.answered = time.monotonic()
                timeline.defer_s = retry_after or 0.0
                self.gate.close(defer_s=retry_after or 0.0)
                closed = True
                body = self._read_capped(response, deadline)
        except (BodyTooLarge, DeadlineExceeded, UndecodableBody, httpx.HTTPError) as exc:
            if not closed:
                # No response began. After a timeout nothing proves the request reached the source:
                # it may still wait in a queue or a busy server's backlog and be read later. The
                # next slot waits one more request's life, so even a request read that late keeps
                # its distance from the next one.
                unanswered = isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout))
                timeline.defer_s = source.timeout_s + source.min_interval_s if unanswered else 0.0
                self.gate.close(defer_s=timeline.defer_s)
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
        elapsed = time.monotonic() - started

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
            where = response.headers.get("Location", "?")
            return Outcome(
                Kind.FATAL,
                reason=f"HTTP {status} redirect to {where!r} not followed; fix the source url",
                status=status,
                elapsed_s=elapsed,
            )
        return Outcome(Kind.FATAL, reason=f"HTTP {status}{_error_hint(body)}", status=status, elapsed_s=elapsed)


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
    if isinstance(exc, (BodyTooLarge, DeadlineExceeded, UndecodableBody)):
        return str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    if isinstance(exc, httpx.DecodingError):
        return f"body cannot be decoded ({exc})"
    return f"connection error ({type(exc).__name__}: {exc})"


def _error_hint(body: bytes) -> str:
    # The hint goes into a log line: a CR would forge a second line, ESC sequences would drive the
    # reader's terminal, NUL truncates some viewers. Anything not printable becomes a space.
    text = "".join(c if c.isprintable() else " " for c in body[:200].decode("utf-8", "replace"))
    text = " ".join(text.split())
    return f": {text}" if text else ""
