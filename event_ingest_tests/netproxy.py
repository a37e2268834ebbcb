"""A TCP forwarder for tests: a real connection to a real server, whose replies can be held back.

``delay_next_reply(s)`` holds the next bytes the server sends back for ``s`` seconds before the client
gets them: to the client it is exactly a process that paused after the server had answered (the
server acted at once; the answer was read late). Nothing of the project is replaced.
"""

from __future__ import annotations

import socket
import threading
import time


class DelayingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._delay_next = 0.0
        self.delayed = threading.Event()  # set once a held reply has been passed on
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def delay_next_reply(self, seconds: float) -> None:
        with self._lock:
            self._delay_next = seconds
            self.delayed.clear()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if replies:
                    with self._lock:
                        hold, self._delay_next = self._delay_next, 0.0
                    if hold:
                        time.sleep(hold)
                        dst.sendall(data)
                        self.delayed.set()
                        continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closing = True
        self._listener.close()
