"""When a request reached the source: the kernel's receive time of its bytes, beside the handler's.

The 200 ms rule is about requests reaching the source. A handler thread stamping ``time.monotonic()``
when it gets to a request measures something later: how soon a (possibly CPU-starved) process read
the request from its socket. A request that waits in the socket's buffer while the mock's threads
wait for a CPU is stamped late, and two requests that reached the host 2 s apart can be stamped
10 ms apart if the handler reads them one after the other.

So each accepted socket asks the kernel for receive timestamps (``SO_TIMESTAMPNS``): every
``recvmsg`` returns, as ancillary data, the time the kernel received the data it returns
(CLOCK_REALTIME, nanoseconds). A request's *kernel arrival* is the receive time of the bytes its
request line started in. Clients here never pipeline (one request per connection at a time, the
next only after the previous response), so those bytes come in the first read after the previous
request; if the request line was already buffered, the last read's time is used, which is earlier
and so never flatters the client.

Linux only (the constant below is Linux's on every architecture it shares ``asm-generic`` with,
x86_64 and aarch64 included); elsewhere, and on TLS sockets (no ``recvmsg``), there is no kernel
stamp and only the handler's is recorded.
"""

from __future__ import annotations

import io
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>: SO_TIMESTAMPNS_OLD; SCM_TIMESTAMPNS has the same value
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux: tv_sec, tv_nsec
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


def enable(sock: socket.socket) -> bool:
    """Ask the kernel to stamp what this socket receives; False where that is not available."""
    if not sys.platform.startswith("linux") or not hasattr(sock, "recvmsg_into"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def monotonic_from_wall(wall_s: float) -> float:
    """A CLOCK_REALTIME instant on this host's ``time.monotonic()`` clock (the one every stamp here uses)."""
    return wall_s - (time.time() - time.monotonic())


class StampingReader(io.RawIOBase):
    """A socket's read side that keeps the kernel receive time of each read."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.last_monotonic: float | None = None  # kernel receive time of the latest read
        self._first_since_mark: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        nbytes, ancdata, _flags, _addr = self._sock.recvmsg_into([buffer], _ANCILLARY)
        if nbytes:
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
                    seconds, nanos = _TIMESPEC.unpack_from(data)
                    self.last_monotonic = monotonic_from_wall(seconds + nanos / 1e9)
                    if self._first_since_mark is None:
                        self._first_since_mark = self.last_monotonic
        return nbytes

    def mark(self) -> None:
        """A new request begins: the next read's stamp is its arrival."""
        self._first_since_mark = None

    def arrival(self) -> float | None:
        """Kernel arrival of the request read since ``mark()``."""
        return self._first_since_mark if self._first_since_mark is not None else self.last_monotonic
