"""Source client: one HTTP attempt against one source, through the gate.

Every attempt - first tries, retries, probes, an operator's skip - is :meth:`SourceClient.fetch`:
it takes a gate slot, sends under it, and closes it when the response begins (or the attempt fails);
the slot is this function's alone, from grant to close (``gate.slot()``), so the rule "every request
closes its slot" lives here and nowhere else, and the request is held to it where it is written
(``http.py``). A slot given back unsent (a pause between grant and send) is asked for again here too.
The client counts what it sent (``requests``), writes the trace line of every attempt and classifies
what came back; the retry *policy* is retry.py's, so there is one of it.

``https`` sources are verified against the system's certificate store (not a
bundle shipped with a Python package), or against the source's ``ca_file``.
A certificate that is not trusted is a configuration problem, not a
transient one: retrying cannot fix it. Configured header values never
appear in a reason, even when the source echoes them back in an error page.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import httpcore
import redis

from ..config import SourceConfig
from ..version import __version__
from .gate import Gate, GateUnavailable, Slot
from .http import (
    Connection,
    DeadlineExceeded,
    SlotWentStale,
    TransportError,
    header,
    parse_retry_after,
    tls_context,
    untrusted_certificate,
)
from .page import MalformedPage, Page, Quarantined, parse_page

log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter
# One JSON line per request at DEBUG (its gate slot, send and close times, epoch, cursor, outcome), for
# whoever must explain a gap seen at a source (the chaos harness turns it on); off, it costs one check.
trace = logging.getLogger("event_ingest.trace")

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


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:  # longest first, so a token inside a longer value goes with it
        text = text.replace(secret, "***")
    return text


class SourceClient:
    """HTTP access to one source: one keep-alive connection, strict limits, every request through the gate."""

    def __init__(self, source: SourceConfig, gate: Gate, *, logger: Logger = log) -> None:
        self.source = source
        self.gate = gate
        self._log = logger
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

    @classmethod
    def through_gate(
        cls, source: SourceConfig, redis_client: redis.Redis, *, token: str, logger: Logger = log
    ) -> SourceClient:
        """The client of one holder (``token``), with the source's gate: its reservation outlives the longest
        request (timeout plus one interval)."""
        hold_s = source.timeout_s + source.min_interval_s
        gate = Gate(redis_client, source.name, interval_s=source.min_interval_s, hold_s=hold_s, token=token)
        return cls(source, gate, logger=logger)

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
        self,
        last_id: int,
        *,
        max_wait_s: float | None = None,
        give_up_at: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        max_unsent: int | None = 1,
        epoch: int | None = None,
    ) -> Outcome | None:
        """One request for the page after ``last_id``, each attempt under a gate slot of its own (``gate.slot()``:
        taken, sent under and closed here, on every way out).

        A slot given back unsent (a pause between grant and send) is asked for again, up to ``max_unsent``
        slots (None: until sent); the last unsent outcome is returned if none could be sent. None if no slot
        came within ``max_wait_s`` (of each ask) or by ``give_up_at`` (monotonic), or ``should_stop()`` said so.
        ``epoch`` goes into the trace line of each attempt. Raises :class:`~.gate.GateUnavailable`."""
        unsent = 0
        while True:
            wait = max_wait_s
            if give_up_at is not None:
                left = max(give_up_at - time.monotonic(), 0.0)
                wait = left if wait is None else min(wait, left)
            outcome = self._one_slot(last_id, wait, should_stop)
            if outcome is None:
                return None
            if trace.isEnabledFor(logging.DEBUG):
                self._trace(outcome, last_id, epoch)
            if outcome.sent:
                return outcome
            unsent += 1
            if max_unsent is not None and unsent >= max_unsent:
                return outcome
            # Nothing reached the source: no attempt used, nothing to count; ask for a slot again.
            self._log.warning("%s", outcome.reason)
            if should_stop is not None and should_stop():
                return None

    def _one_slot(
        self, last_id: int, max_wait_s: float | None, should_stop: Callable[[], bool] | None
    ) -> Outcome | None:
        with self.gate.slot(max_wait_s, should_stop) as slot:
            if slot is None:
                return None
            grant = slot.grant
            timeline = Timeline(grant.asked_monotonic, grant.granted_monotonic, grant.redis_time_us)
            outcome = self._attempt(slot, last_id, timeline)
        timeline.closed, timeline.closed_redis_us = slot.closed_at, slot.closed_redis_us
        outcome.timeline = timeline
        if self._secrets:
            outcome.reason = redact(outcome.reason, self._secrets)
        return outcome

    def _trace(self, outcome: Outcome, last_id: int, epoch: int | None) -> None:
        line = {
            "src": self.source.name,
            "consumer": self.gate.token,
            "epoch": epoch,
            "last_id": last_id,
            "kind": outcome.kind.value,
            "sent": outcome.sent,
            "status": outcome.status,
            "reason": outcome.reason or None,
            **(dataclasses.asdict(outcome.timeline) if outcome.timeline is not None else {}),
        }
        trace.debug("%s", json.dumps(line))

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
        untrusted = untrusted_certificate(exc)
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
