"""The HTTP layer under the source client: where a request is really written, and held to its slot.

The gate grants a slot as a reservation that lapses ``hold`` (timeout + interval) after the grant;
the request must reach the source, and be answered or given up, well inside it. What can put a
request outside its slot, and what this module does about each:

1. The process pauses between the grant and the write (SIGSTOP, a frozen VM, a long GC, a thread
   waiting for the GIL on a starved machine), possibly for longer than the hold: meanwhile the
   reservation lapses and another consumer sends. A request written after that lands next to
   theirs. So the first ``write()`` of each request checks the clock against the slot's *send-by*
   time (half an interval after the grant was asked for) immediately before the bytes go to the
   socket, and refuses with :class:`SlotWentStale`: nothing was written, the slot is given back.
   The check sits under connection set-up too, so a slow connect (or TLS handshake) counts.
   Left open, and no client can close it: a pause between this check and the ``send()`` system
   call, a few microseconds.
2. The request is written, then the source is slow: connect, write and the wait for the response
   each have a timeout of their own in a plain client, so a request could still be waiting for its
   first byte well after its slot lapsed. Here every read and write (and the connect) of a
   request gets at most what is left of ONE deadline, ``timeout_s`` from when the slot was asked
   for: by then the response has begun (the slot is closed at once) or the attempt has failed
   (the slot is closed as unanswered, one more request's life later).
3. Whether anything was written is known (``Guard.written``): a failure before the first byte
   (connection refused, the slot gone stale) proves nothing reached the source and costs only the
   interval; any failure after it (timeout, reset, a broken response) may have left the request in
   the source's backlog, to be read later, and the next slot waits one more request's life.

Built on httpcore (httpx's own transport layer, with a network backend of ours), not httpx's
client: the source client needs one GET, raw bytes and status, and nothing else of what a general
client does per request.
"""

from __future__ import annotations

import email.utils
import math
import ssl
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpcore

from ..config import SourceConfig

# What a failed attempt can raise from here: httpcore's errors (timeouts, network, protocol) and ours.
TransportError = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)


class SlotWentStale(Exception):
    """The request's slot is older than its send-by time: not written, given back."""


class DeadlineExceeded(httpcore.TimeoutException):
    """The whole request (connect, write, response) did not finish within ``timeout_s`` of its slot."""


class Guard:
    """The current request's limits, shared by its connection's reads and writes (one request at a time)."""

    def __init__(self) -> None:
        self.send_by = math.inf  # monotonic: the first write of the request must begin by then
        self.deadline = math.inf  # monotonic: every read and write of the request must end by then
        self.written = False  # some bytes of the request were handed to the socket
        self.written_at: float | None = None  # monotonic: when the first of them was

    def arm(self, send_by: float, deadline: float) -> None:
        self.send_by, self.deadline, self.written, self.written_at = send_by, deadline, False, None

    def disarm(self) -> None:
        self.send_by = self.deadline = math.inf

    def left(self, timeout: float | None, what: str) -> float | None:
        """``timeout`` cut to what is left of the deadline; raises once nothing is."""
        if self.deadline == math.inf:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"{what}: the request's deadline passed")
        return left if timeout is None else min(timeout, left)

    @contextmanager
    def timing(self, what: str) -> Iterator[None]:
        """A timeout that came from the deadline (not the operation's own limit) says so."""
        try:
            yield
        except httpcore.TimeoutException as exc:
            if time.monotonic() >= self.deadline:
                raise DeadlineExceeded(f"{what}: the request's deadline passed") from exc
            raise

    def before_write(self) -> None:
        if self.written:
            return
        now = time.monotonic()
        if now > self.send_by:
            raise SlotWentStale("gate slot went stale before sending (process paused?); not sent")
        self.written, self.written_at = True, now


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with self._guard.timing("read"):
            return self._inner.read(max_bytes, self._guard.left(timeout, "read"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._guard.before_write()  # immediately before the bytes go to the socket
        with self._guard.timing("write"):
            self._inner.write(buffer, self._guard.left(timeout, "write"))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, self._guard.left(timeout, "TLS handshake"))
        return _Stream(tls, self._guard)

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, guard: Guard) -> None:
        self._inner = httpcore.SyncBackend()
        self._guard = guard

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self._inner.connect_tcp(
            host, port, self._guard.left(timeout, "connect"), local_address, socket_options
        )
        return _Stream(stream, self._guard)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        stream = self._inner.connect_unix_socket(path, self._guard.left(timeout, "connect"), socket_options)
        return _Stream(stream, self._guard)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _proxy_for(url: str) -> httpcore.Proxy | None:
    """The proxy the environment names for ``url`` (HTTP(S)_PROXY, NO_PROXY), as a plain client would use."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return httpcore.Proxy(proxy)


class Connection:
    """One keep-alive connection to one source, its requests held to their slots by a :class:`Guard`."""

    def __init__(self, url: str, headers: Iterable[tuple[str, str]], tls: ssl.SSLContext) -> None:
        self.guard = Guard()
        self._url = url
        self._headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._pool = httpcore.ConnectionPool(
            ssl_context=tls,
            proxy=_proxy_for(url),
            max_connections=1,
            max_keepalive_connections=1,
            network_backend=_Backend(self.guard),
        )

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def get(self, query: str, *, send_by: float, deadline: float) -> Iterator[httpcore.Response]:
        """GET ``url?query``; the response's status and headers, its body read from ``iter_stream()``."""
        self.guard.arm(send_by, deadline)
        try:
            with self._pool.stream("GET", f"{self._url}?{query}", headers=self._headers) as response:
                yield response
        finally:
            self.guard.disarm()


def header(response: httpcore.Response, name: str) -> str | None:
    wanted = name.lower().encode("latin-1")
    for key, value in response.headers:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def tls_context(source: SourceConfig) -> ssl.SSLContext:
    """The system's trust store (httpx alone would use certifi's bundle), or only the source's ca_file."""
    return ssl.create_default_context(cafile=source.ca_file)


def untrusted_certificate(exc: BaseException) -> str | None:
    """What the TLS layer said, if the failure was a certificate it could not verify."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # httpx -> httpcore -> ssl
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause.verify_message or cause.reason or "certificate verify failed"
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


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
