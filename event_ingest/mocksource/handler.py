"""The mock's HTTP layer: the threading server and the request handler (routes, /events).

The handler answers through a small public response API (``send``, ``send_json``, ``send_events``,
``send_head``, ``write``, ``pause``, ``reset``): the one-shot actions (``oneshots.py``) use it as a
``Responder``, and never reach into the handler's own state.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from event_ingest.mocksource import arrival
from event_ingest.mocksource.config import MAX_ID
from event_ingest.mocksource.oneshots import ONESHOTS
from event_ingest.mocksource.spec import JSON_CONTENT_TYPE, has_header
from event_ingest.mocksource.state import SourceState

log = logging.getLogger(__name__)

# Cap on POST bodies: big enough for base64 one-shot bodies, small enough that
# a runaway harness cannot exhaust memory.
_MAX_POST_BYTES = 32 * 1024 * 1024


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], state: SourceState) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.tls: ssl.SSLContext | None = None
        if state.config.tls_cert_file is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(state.config.tls_cert_file, state.config.tls_key_file)
        super().__init__(address, Handler)

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
        # Accepted sockets inherit it, so even a request that came with the connection is stamped.
        arrival.enable(self.socket)
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real sources
    server_version = "mocksource/1"
    sys_version = ""
    # Headers and body are separate writes; with Nagle on, the body waits for
    # the client's delayed ACK (~40 ms), which would distort every latency the
    # project measures against this mock.
    disable_nagle_algorithm = True

    # Set per request; True while answering /events so statuses get recorded.
    _is_events = False
    # The socket's reader when the kernel stamps what it receives (arrival.py), else None.
    _stamps: arrival.StampingReader | None = None

    @property
    def _server(self) -> Server:
        return cast(Server, self.server)

    @property
    def _state(self) -> SourceState:
        return self._server.state

    # ---- plumbing ---------------------------------------------------------

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()
        if not isinstance(self.connection, ssl.SSLSocket) and arrival.enable(self.connection):
            self._stamps = arrival.StampingReader(self.connection)
            plain, self.rfile = self.rfile, io.BufferedReader(self._stamps)
            plain.close()  # the socket's own reader, unused: closing it lets the socket close with the connection
        self._server.track(self.connection, alive=True)

    def handle_one_request(self) -> None:
        if self._stamps is not None:
            self._stamps.mark()
        super().handle_one_request()

    def finish(self) -> None:
        self._server.track(self.connection, alive=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and benchmarks would drown in per-request lines

    def send_response(self, code: int, message: str | None = None) -> None:
        if self._is_events:
            self._state.recorder.status(code)
        super().send_response(code, message)

    # ---- the response API (what one-shot actions use: oneshots.Responder) --

    def send(
        self,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str, str]] = (("Content-Type", JSON_CONTENT_TYPE),),
        *,
        omit_content_length: bool = False,
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        framed_by_caller = has_header(headers, "content-length") or has_header(headers, "transfer-encoding")
        if not framed_by_caller and not omit_content_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            # The body's framing is whatever the fault says, possibly a lie, so
            # this connection cannot safely carry another response.
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send(status, json.dumps(obj).encode(), [("Content-Type", JSON_CONTENT_TYPE), *headers])

    def send_head(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.close_connection = True  # whatever body follows, its framing is the caller's
        self.end_headers()

    def write(self, data: bytes) -> None:
        self.wfile.write(data)

    def pause(self, seconds: float) -> bool:
        if self._state.stopping.wait(seconds):
            self.close_connection = True
            return True
        return False

    def reset(self) -> None:
        self.close_connection = True
        try:
            # Linger 0 turns close() into an RST rather than a polite FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # The fd really closes once the handler's rfile is closed in finish().
        self.connection.close()

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
            kernel = self._stamps.arrival() if self._stamps is not None else None
            self._state.recorder.arrival(arrived, kernel, url.query)
            self._state.recorder.request_headers(self.headers)
            self._is_events = True
            try:
                self._events(url.query)
            finally:
                self._is_events = False
        elif url.path == "/health":
            self.send_json(200, {"ok": True, "name": self._state.config.name})
        elif url.path == "/stats":
            query = parse_qs(url.query)
            flag = lambda name: query.get(name, ["0"])[-1] not in ("0", "", "false")  # noqa: E731
            self.send_json(200, self._state.stats(flag("ids"), flag("arrivals")))
        elif url.path == "/control":
            self.send_json(200, {"ok": True, **self._state.faults.describe()})
        else:
            self.send_json(404, {"error": f"no such path: {url.path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            body = self._read_json_body()
        except ValueError as exc:
            self.send_json(400, {"error": str(exc)})
            return
        if path == "/control":
            try:
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                self._state.control(body)
            except ValueError as exc:
                self.send_json(400, {"error": str(exc)})
                return
            self.send_json(200, {"ok": True, **self._state.faults.describe()})
        elif path == "/stats/reset":
            self._state.recorder.reset()
            self.send_json(200, {"ok": True})
        elif path == "/events":
            self.send_json(405, {"error": "use GET"}, [("Allow", "GET")])
        else:
            self.send_json(404, {"error": f"no such path: {path}"})

    # ---- /events ----------------------------------------------------------

    def _events(self, query: str) -> None:
        state = self._state
        shot = state.faults.pop_next()
        if shot is not None:
            state.recorder.fault(shot.kind)
            _, act = ONESHOTS[shot.kind]
            if not act(self, shot.params):
                return

        settings = state.faults.settings
        if settings.latency_ms > 0:
            state.recorder.fault("latency")
            if self.pause(settings.latency_ms / 1000.0):
                return

        try:
            last_id, limit = self._parse_cursor(query)
        except ValueError as exc:
            self.send_json(400, {"error": str(exc)})
            return
        state.recorder.last_id(last_id)

        fault = state.faults.draw()
        if fault == "error":
            state.recorder.fault("error")
            self.send_json(500, {"error": "injected internal error"})
            return
        if fault == "rate_limit":
            state.recorder.fault("rate_limit")
            self.send_json(429, {"error": "rate limited"}, [("Retry-After", str(settings.retry_after_s))])
            return

        events = state.store.query(last_id, limit)
        body = json.dumps({"events": events}).encode()
        if fault == "malformed":
            state.recorder.fault("malformed")
            # Truncated JSON with an honest Content-Length: the HTTP layer is
            # fine, only the body parser should complain.
            self.send(200, body[: max(1, len(body) // 2)])
            return
        self.send_events(body, [e["id"] for e in events])

    def send_events(self, body: bytes, ids: list[int]) -> None:
        # Recorded before writing so /stats never lags a response the client
        # already has; undone if the write fails.
        self._state.recorder.served(ids)
        try:
            self.send(200, body)
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
        if last_id > MAX_ID:
            raise ValueError("lastId out of range")
        limit = one("limit", max_limit)
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return last_id, min(limit, max_limit)
