"""A TCP relay on loopback: what a virtual IP, a DNS name or a network link is to the connections through it.

The harness puts one in front of "the Redis" (the consumers' URL names the relay, as a deployment names a
VIP or a DNS record that a failover moves) and one on the replication link between a primary and its
replica. Three moves:

* ``switch(target)``: later connections go to another server and every current one is dropped, as when a
  VIP moves to the promoted replica (clients see their connections reset and reconnect).
* ``hold()``: bytes from the target side are read and kept, not passed on, as on a link that lags. Held
  bytes are exactly what a replica behind has not received: stopping the replica's process is not the same
  (the kernel keeps receiving into its socket buffer, and a woken replica applies it all before it notices
  that its primary died).
* ``cut()``: every connection dropped and whatever was held thrown away, as when the primary dies with
  replication behind.
"""

from __future__ import annotations

import socket
import threading

HOST = "127.0.0.1"


class _Pair:
    """One client connection and its connection to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.held: list[bytes] = []  # from the target, kept while the relay holds
        self.closed = False  # set under the relay's lock; from then on nothing is passed on

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class Relay:
    def __init__(self, target_port: int, port: int = 0) -> None:
        self._target = (HOST, target_port)
        self._listener = socket.create_server((HOST, port))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._holding = False
        self._closing = False
        threading.Thread(target=self._accept, daemon=True, name=f"relay-{self.port}").start()

    @property
    def target_port(self) -> int:
        return self._target[1]

    def switch(self, target_port: int) -> None:
        with self._lock:
            self._target = (HOST, target_port)
        self.cut()

    def hold(self) -> None:
        with self._lock:
            self._holding = True

    def cut(self) -> int:
        """Drop every connection; returns how many bytes were held and are now lost (bytes still on their way,
        in the relay's own socket buffers, are lost too, uncounted)."""
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
            for pair in pairs:
                pair.closed = True
            lost = sum(len(d) for p in pairs for d in p.held)
        for pair in pairs:
            pair.close()
        with self._lock:
            self._holding = False  # only now: a pump that still reads finds its pair closed, not a free way
        return lost

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                target = self._target
            try:
                upstream = socket.create_connection(target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the target is down: to the client, a connection that ends at once
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, True), daemon=True).start()

    def _pump(self, pair: _Pair, from_target: bool) -> None:
        src, dst = (pair.upstream, pair.client) if from_target else (pair.client, pair.upstream)
        try:
            while data := src.recv(65536):
                with self._lock:
                    if pair.closed:
                        break
                    if from_target and self._holding:
                        pair.held.append(data)
                        continue
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
            closed, pair.closed = pair.closed, True
        if not closed:
            pair.close()
