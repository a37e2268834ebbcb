"""An outside event source: K live sources served by one small process, arrivals stamped by the kernel.

    python -m event_ingest.bench.outside_source [--rate 20] [--host 127.0.0.1] NAME [NAME ...]

Not the project's mock source (event_ingest.mocksource), on purpose, and sharing no code with it:
a measurement of the stack should not rest on the stack's own test double. One process serves
every NAME on a port of its own (as separate hosts would), answers the source protocol

    GET /events?lastId=N&limit=M  ->  200 {"events": [{"id": N+1, "payload": {"created_at": ...}}, ...]}

and keeps, per source, every /events request's arrival and the ids it served, for ``GET /stats``
(``?arrivals=1`` adds every stamp). On start it prints one line to stdout, ``{"ports": {NAME:
PORT, ...}}``, then serves until SIGTERM or SIGINT.

Live ids: source NAME has event k (k = 1, 2, ...) from ``started + k / rate`` on, and that moment
is its payload's ``created_at`` (epoch seconds): lag is read from Postgres alone.

When did a request arrive? What goes wrong with a stamp taken by the server's own code:

  t=0     a request reaches this host; the kernel queues its bytes on the socket
  t=0..d  this process waits for a CPU (the machine is busy with the stack being measured)
  t=d     the loop reads the bytes and stamps "now": d late
  then    two requests that reached the host 200 ms apart, the first one read late, look
          200 - d apart (a violation that never happened), and pauses look shorter or longer.

So each listening socket asks for SO_TIMESTAMPNS (accepted sockets inherit it) and every read
is a recvmsg whose ancillary data carries the kernel's receive time of those bytes
(CLOCK_REALTIME; for a read that takes several segments at once, the last one's). A request's
arrival is the kernel time of the first read it came in. Clients of the protocol do not pipeline
(the next request on a connection only after the response), so a read holds one request's
bytes; should one hold several requests, each gets that read's stamp (their gaps then read as 0:
a violation reported, never one hidden). The loop's own stamp (``time.time()`` when the read
returned) is kept beside it: the distance between the two is how late this process saw the
request. Where the kernel gives no stamp (not Linux; or the first moments after start: Linux
turns stamping on a little after the first socket asks, from a deferred job), the loop's stamp
is all there is.

One thread, one selector, non-blocking sockets: the harness costs the machine it measures little CPU.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qsl, urlsplit

# <asm-generic/socket.h> (x86_64 and aarch64 alike): SO_TIMESTAMPNS(_OLD); its control message
# type SCM_TIMESTAMPNS has the same value. The socket module does not name it.
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@qq")  # tv_sec, tv_nsec (64-bit Linux)
ANCILLARY_BYTES = socket.CMSG_SPACE(TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
READ_BYTES = 65536
DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000
MAX_HEAD_BYTES = 64 * 1024  # a request head larger than this is not a client of the protocol


def kernel_stamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp what ``sock`` (and every socket it accepts) receives; False where it cannot."""
    if not sys.platform.startswith("linux") or not ANCILLARY_BYTES:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def stamp_of(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel receive time (epoch seconds) in a recvmsg's ancillary data, if there is one."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            seconds, nanos = TIMESPEC.unpack_from(data)
            return seconds + nanos / 1e9
    return None


class BadRequest(ValueError):
    """A request this source refuses with 400; the message says what and where."""


@dataclass
class LiveSource:
    """One source's stream and what it saw. Ids are consecutive, so nothing per event is stored."""

    name: str
    rate: float
    started: float = field(default_factory=time.time)
    # Per /events request: (kernel stamp or None, the loop's stamp), epoch seconds, in arrival order.
    arrivals: list[tuple[float | None, float]] = field(default_factory=list)
    # Ids served, as merged [first, last] ranges: exact, and a few numbers however long the run.
    served: list[list[int]] = field(default_factory=list)

    def head(self, now: float) -> int:
        """The highest id that exists at ``now``."""
        return max(0, int((now - self.started) * self.rate))

    def created_at(self, event_id: int) -> float:
        return self.started + event_id / self.rate

    def page(self, last_id: int, limit: int, now: float) -> list[dict]:
        last = min(self.head(now), last_id + limit)
        if last > last_id:
            self._serve(last_id + 1, last)
        return [
            {"id": i, "payload": {"created_at": self.created_at(i), "source": self.name, "seq": i}}
            for i in range(last_id + 1, last + 1)
        ]

    def _serve(self, first: int, last: int) -> None:
        merged: list[list[int]] = []
        for lo, hi in sorted([*self.served, [first, last]]):  # a few ranges: clients ask from their cursor
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.served = merged

    def stats(self, arrivals: bool) -> dict:
        now = time.time()
        out = {
            "source": self.name,
            "rate": self.rate,
            "started": self.started,
            "now": now,
            "head_id": self.head(now),
            "requests": len(self.arrivals),
            "kernel_stamped": sum(1 for k, _ in self.arrivals if k is not None),
            "served": self.served,
        }
        if arrivals:
            out["arrivals"] = self.arrivals  # [[kernel or null, loop], ...]
        return out


def parse_events_query(query: str, source: str) -> tuple[int, int]:
    """(lastId, limit) from a query string; BadRequest naming the parameter, its value and the source."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    values = {}
    for key, default, low, high in (("lastId", 0, 0, None), ("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)):
        raw = params.get(key)
        try:
            value = default if raw is None else int(raw)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = f">= {low}" + (f" and <= {high}" if high is not None else "")
            raise BadRequest(f"{key} must be an integer {bound}, got {raw!r} (GET /events of source {source})")
        values[key] = value
    return values["lastId"], values["limit"]


@dataclass(eq=False)  # compared by identity: the selector checks whether its data changed
class Connection:
    sock: socket.socket
    source: LiveSource
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    # Stamps of the read that brought the first bytes of the request now in the inbox.
    kernel: float | None = None
    loop: float = 0.0
    closing: bool = False


class OutsideSources:
    """Serves ``names`` from one thread; ``ports`` maps each name to its port once started.

    In a process: ``OutsideSources(names, rate).serve_forever()``; in a test: ``start()`` and ``stop()``.
    """

    def __init__(self, names: Sequence[str], rate: float, host: str = "127.0.0.1") -> None:
        if not names:
            raise ValueError("name at least one source")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {list(names)}")
        if rate <= 0:
            raise ValueError(f"rate must be > 0 events/s, got {rate}")
        started = time.time()  # one start for all: ids grow in step across the process
        self.sources = {n: LiveSource(n, rate, started) for n in names}
        self.host = host
        self.ports: dict[str, int] = {}
        self.kernel_stamped = False
        self._selector = selectors.DefaultSelector()
        self._listeners: list[socket.socket] = []
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._bind()

    def _bind(self) -> None:
        for name, source in self.sources.items():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.kernel_stamped = kernel_stamps(sock)
            sock.bind((self.host, 0))
            sock.listen(128)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, source)
            self._listeners.append(sock)
            self.ports[name] = sock.getsockname()[1]

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.ports[name]}/events"

    # ---- the loop ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        try:
            while not self._halt.is_set():
                for key, mask in self._selector.select(timeout=0.2):
                    if isinstance(key.data, LiveSource):
                        self._accept(cast(socket.socket, key.fileobj), key.data)
                    elif mask & selectors.EVENT_READ:
                        self._read(key.data)
                    elif mask & selectors.EVENT_WRITE:
                        self._flush(key.data)
        finally:
            for key in list(self._selector.get_map().values()):
                cast(socket.socket, key.fileobj).close()  # only sockets are registered
            self._selector.close()

    def start(self) -> OutsideSources:
        self._thread = threading.Thread(target=self.serve_forever, name="outside-sources", daemon=True)
        self._thread.start()
        return self

    def halt(self) -> None:
        """Ask the loop to end (safe from a signal handler); it closes every socket as it goes."""
        self._halt.set()

    def stop(self) -> None:
        self.halt()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> OutsideSources:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self, listener: socket.socket, source: LiveSource) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, ConnectionError):
            return
        sock.setblocking(False)
        # Head and body go out in one send; no Nagle wait for a delayed ACK either way.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._selector.register(sock, selectors.EVENT_READ, Connection(sock, source))

    def _read(self, conn: Connection) -> None:
        try:
            data, ancdata, _, _ = conn.sock.recvmsg(READ_BYTES, ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        loop_stamp = time.time()
        if not data:
            self._close(conn)
            return
        kernel = stamp_of(ancdata)
        if not conn.inbox:  # the first bytes of a request: its arrival
            conn.kernel, conn.loop = kernel, loop_stamp
        conn.inbox += data
        while not conn.closing:
            end = conn.inbox.find(b"\r\n\r\n")
            if end < 0:
                if len(conn.inbox) > MAX_HEAD_BYTES:
                    self._respond(conn, 431, {"error": f"request head over {MAX_HEAD_BYTES} bytes"}, close=True)
                break
            head = bytes(conn.inbox[:end]).decode("latin-1")
            body_length = _content_length(head)
            if len(conn.inbox) < end + 4 + body_length:
                break  # the body is still coming
            del conn.inbox[: end + 4 + body_length]
            self._handle(conn, head, conn.kernel, conn.loop)
            # Already buffered behind it (pipelined): it gets this read's stamp, and a gap of 0 to the one before.
            conn.kernel, conn.loop = kernel, loop_stamp
            if not conn.inbox:
                break
        self._flush(conn)

    def _handle(self, conn: Connection, head: str, kernel: float | None, loop_stamp: float) -> None:
        source = conn.source
        request_line, *header_lines = head.split("\r\n")
        try:
            method, target, version = request_line.split(" ")
        except ValueError:
            self._respond(conn, 400, {"error": f"malformed request line {request_line[:80]!r}"}, close=True)
            return
        close = version == "HTTP/1.0" or any(h.lower().replace(" ", "") == "connection:close" for h in header_lines)
        url = urlsplit(target)
        if url.path == "/events":
            source.arrivals.append((kernel, loop_stamp))  # every request counts, a refused one too
            if method != "GET":
                self._respond(conn, 405, {"error": f"{method} /events: only GET (source {source.name})"}, close)
                return
            try:
                last_id, limit = parse_events_query(url.query, source.name)
            except BadRequest as exc:
                self._respond(conn, 400, {"error": str(exc)}, close)
                return
            self._respond(conn, 200, {"events": source.page(last_id, limit, time.time())}, close)
        elif url.path == "/stats" and method == "GET":
            self._respond(conn, 200, source.stats("arrivals=1" in url.query), close)
        elif url.path == "/health":
            self._respond(conn, 200, {"ok": True, "source": source.name}, close)
        else:
            self._respond(conn, 404, {"error": f"no route {method} {url.path} (source {source.name})"}, close)

    def _respond(self, conn: Connection, status: int, body: dict, close: bool) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            431: "Request Header Fields Too Large",
        }.get(status, "Error")
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        if close:
            head += "Connection: close\r\n"
        conn.outbox += (head + "\r\n").encode() + payload
        conn.closing = conn.closing or close

    def _flush(self, conn: Connection) -> None:
        if conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            del conn.outbox[:sent]
        if conn.outbox:  # the rest when the socket can take it; reads wait until then
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        elif conn.closing:
            self._close(conn)
        else:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _close(self, conn: Connection) -> None:
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()


def _content_length(head: str) -> int:
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length":
            try:
                return max(0, int(value.strip()))
            except ValueError:
                return 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m event_ingest.bench.outside_source", description=__doc__)
    parser.add_argument("names", nargs="+", metavar="NAME", help="source names, one port each")
    parser.add_argument("--rate", type=float, default=20.0, help="new events per second per source (default 20)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    args = parser.parse_args(argv)
    try:
        server = OutsideSources(args.names, args.rate, args.host)
    except (ValueError, OSError) as exc:
        print(f"outside source: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: server.halt())
    signal.signal(signal.SIGINT, lambda *_: server.halt())
    print(json.dumps({"ports": server.ports, "kernel_stamped": server.kernel_stamped}), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
