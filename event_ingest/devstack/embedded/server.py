"""What both embedded servers share: start-up with port choice and retries, logs and
one-line errors, stopping, and orphans left by an earlier run."""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from event_ingest.devstack.procs import (
    HOST,
    alive,
    free_port,
    kill_hard,
    name_and_cwd,
    port_is_free,
    stop_child,
    stop_pid,
)
from event_ingest.devstack.procs import spawn as spawn_process

log = logging.getLogger(__name__)

#: File inside a data directory remembering the port chosen for it.
PORT_FILE = "event_ingest.port"

OrphanPolicy = Literal["error", "stop", "adopt"]

_LOG_TAIL_LINES = 8
_ADDRESS_IN_USE = ("address already in use", "could not create any tcp/ip sockets")


class EmbeddedServerError(RuntimeError):
    """A server could not be prepared, started or stopped.

    The message is one line: what failed, where the log is, and the last log lines
    (joined with `` | ``). The parts are also available as attributes.
    """

    def __init__(self, what: str, *, log_path: Path | None = None, log_tail: Sequence[str] = ()):
        self.what = what
        self.log_path = log_path
        self.log_tail = list(log_tail)
        msg = what
        if log_path is not None:
            msg += f"; log: {log_path}"
        if self.log_tail:
            msg += "; last log lines: " + " | ".join(self.log_tail)
        super().__init__(msg)


class ServerURL(str):
    """The server's default URL, as a plain ``str``, which can also be called to get
    the URL of another database: ``pg.url`` / ``pg.url("dagster")``, ``rd.url(1)``."""

    _factory: Callable[..., str]

    def __new__(cls, value: str, factory: Callable[..., str]) -> ServerURL:
        obj = super().__new__(cls, value)
        obj._factory = factory
        return obj

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return self._factory(*args, **kwargs)

    def __reduce__(self):  # pickles/copies as a plain str
        return (str, (str(self),))


class EmbeddedServer:
    """Process handling shared by both servers."""

    kind = "server"
    _stop_signal = signal.SIGTERM
    _pid_file_name = ""  # inside data_dir, written by the server itself
    _exe = "server"  # in messages
    _exe_names: tuple[str, ...] = ()  # one of them is in its argv[0]: how an orphan is recognised
    _not_ready = "did not answer"  # in the message when start-up times out
    _ready_poll_s = 0.05

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None,
        *,
        on_orphan: OrphanPolicy = "error",
        log_file: Path | str | None = None,
    ):
        if on_orphan not in ("error", "stop", "adopt"):
            raise ValueError(f"on_orphan must be 'error', 'stop' or 'adopt', not {on_orphan!r}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._requested_port = port
        self.port: int | None = port
        self.on_orphan: OrphanPolicy = on_orphan
        self.log_path = (
            Path(log_file).expanduser().resolve()
            if log_file is not None
            else self.data_dir.parent / f"{self.data_dir.name}.log"
        )
        self.timings: dict[str, float] = {}
        self._proc: subprocess.Popen | None = None
        self._adopted_pid: int | None = None
        self._log_offset = 0

    # -- public state

    @property
    def pid(self) -> int | None:
        """Pid of the server process (postmaster / valkey-server), None if not started."""
        if self._proc is not None:
            return self._proc.pid
        return self._adopted_pid

    @property
    def adopted(self) -> bool:
        """True if the running server is an orphan of an earlier run that we took over."""
        return self._adopted_pid is not None

    def url_for(self, *args: Any) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def url(self) -> ServerURL:
        """The default URL (Postgres: the first database; Redis: db 0); call it for another:
        ``pg.url("dagster")``, ``rd.url(1)``."""
        return ServerURL(self.url_for(), self.url_for)

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self._adopted_pid is not None:
            return alive(self._adopted_pid)
        return False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self.data_dir} port={self.port} {state}>"

    def start(self, timeout: float = 30.0) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- stopping

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down; SIGKILL (its whole process group) after `timeout`.
        Idempotent; also reaps a server that died on its own."""
        try:
            if self._proc is not None:
                proc = self._proc
                if not stop_child(proc, self._stop_signal, timeout):
                    log.warning("%s (pid %s) did not stop within %.0fs; killed it", self.kind, proc.pid, timeout)
            elif self._adopted_pid is not None:
                stop_pid(self._adopted_pid, self._stop_signal, timeout)
        finally:
            self._proc = None
            self._adopted_pid = None
            self._after_stop()

    def _after_stop(self) -> None:
        pass

    # -- logs and errors

    def _open_log(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.log_path, "ab")
        self._log_offset = f.tell()  # error messages quote this run's lines only
        f.write(f"=== event_ingest: {self.kind} {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
        f.flush()
        return f

    def _log_tail(self, n: int = _LOG_TAIL_LINES) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()[-20000:]
        except OSError:
            return []
        lines = [ln.strip() for ln in data.decode(errors="replace").splitlines()]
        lines = [ln[:300] for ln in lines if ln and not ln.startswith("=== event_ingest:")]
        return lines[-n:]

    def _error(self, what: str, with_log: bool = True) -> EmbeddedServerError:
        if not with_log:
            return EmbeddedServerError(what)
        return EmbeddedServerError(what, log_path=self.log_path, log_tail=self._log_tail())

    def _spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        with self._open_log() as logf:
            try:
                return spawn_process(cmd, stdout=logf, stderr=subprocess.STDOUT, **kwargs)
            except OSError as e:
                raise self._error(f"could not execute {cmd[0]}: {e}") from e

    def _abort_startup(self) -> None:
        """Kill a half-started server hard (no need for a clean shutdown)."""
        if self._proc is not None and self._proc.poll() is None:
            kill_hard(self._proc.pid)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._proc = None
        self._after_stop()

    # -- ports

    def _read_port_file(self) -> int | None:
        try:
            port = int((self.data_dir / PORT_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def _write_port_file(self, owner: pwd.struct_passwd | None = None) -> None:
        p = self.data_dir / PORT_FILE
        if self._read_port_file() != self.port:
            p.write_text(f"{self.port}\n")
        if owner is not None:
            os.chown(p, owner.pw_uid, owner.pw_gid)

    def _choose_port(self) -> tuple[int, bool]:
        """(port, auto): the requested port (must be free), else the remembered one if
        free, else a new free one. `auto` says a different port may be tried on a clash."""
        if self._requested_port is not None:
            if not port_is_free(self._requested_port):
                raise self._error(
                    f"cannot start {self.kind}: port {self._requested_port} on {HOST} is already in use", with_log=False
                )
            return self._requested_port, False
        remembered = self._read_port_file()
        if remembered is not None:
            if port_is_free(remembered):
                return remembered, True
            log.info("%s: remembered port %s is taken, choosing another", self.kind, remembered)
        return free_port(), True

    def _start_failed_on_port_clash(self) -> bool:
        tail = " ".join(self._log_tail(20)).lower()
        return any(s in tail for s in _ADDRESS_IN_USE)

    # -- orphans

    def _looks_like_ours(self, pid: int) -> bool:
        name, cwd = name_and_cwd(pid)
        if name is not None and not any(n in name for n in self._exe_names):
            return False
        return self._same_dir(cwd)  # both servers chdir into their data dir

    def _existing_server_pid(self) -> int | None:
        """Pid of a live server from an earlier run using our data dir, after applying
        the orphan policy: None if there is none (or it was stopped), else the pid to adopt.
        Stale pid files (dead pid, or pid reused by an unrelated process) are removed."""
        pid_file = self.data_dir / self._pid_file_name
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error(f"cannot read {pid_file}: {e}", with_log=False) from e
        first = lines[0].strip() if lines else ""
        try:
            pid = int(first)
        except ValueError:
            pid = -1
        if not alive(pid):
            log.info("%s: removing stale pid file %s (pid %s is gone)", self.kind, pid_file, first)
            self._cleanup_after_dead_server(pid_file, lines)
            return None
        if not self._looks_like_ours(pid):
            log.warning("%s: removing stale pid file %s: pid %s is now an unrelated process", self.kind, pid_file, pid)
            self._cleanup_after_dead_server(pid_file, lines)
            return None
        if self.on_orphan == "adopt":
            log.warning(
                "%s: adopting server pid %s left running on %s by an earlier run", self.kind, pid, self.data_dir
            )
            return pid
        if self.on_orphan == "stop":
            log.warning(
                "%s: stopping server pid %s left running on %s by an earlier run", self.kind, pid, self.data_dir
            )
            stop_pid(pid, self._stop_signal, 30)
            self._cleanup_after_dead_server(pid_file, lines)
            return None
        raise self._error(
            f"a {self.kind} server (pid {pid}) left by an earlier run is still running on data dir "
            f"{self.data_dir}; stop it (kill -{signal.Signals(self._stop_signal).name[3:]} {pid}) or "
            f"pass on_orphan='stop' or 'adopt'",
            with_log=False,
        )

    def _cleanup_after_dead_server(self, pid_file: Path, lines: list[str]) -> None:
        """Remove what a server that is gone left behind: its pid file (and more, per kind).
        `lines` is the pid file's content, read while the server was still running."""
        pid_file.unlink(missing_ok=True)

    def _same_dir(self, cwd: Path | None) -> bool:
        if cwd is None:
            return True  # cannot tell: be conservative
        try:
            return cwd.resolve() == self.data_dir
        except OSError:
            return True

    def _ready(self) -> bool:
        """The server answers (a query, a PING)."""
        raise NotImplementedError

    def _wait_ready(self, deadline: float) -> None:
        while True:
            rc = self._proc.poll() if self._proc is not None else None
            if rc is not None:
                raise self._error(f"{self._exe} exited with code {rc} during startup on port {self.port}")
            if self._proc is None and not self.is_running():
                raise self._error(f"adopted {self._exe} (pid {self._adopted_pid}) exited")
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise self._error(f"{self._exe} {self._not_ready} on {HOST}:{self.port} in time")
            time.sleep(self._ready_poll_s)

    def _launch_with_retries(self, spawn: Callable[[int], None], deadline: float) -> None:
        """Start the server (``spawn(port)``) and wait for it; an auto-chosen port taken between
        choosing and binding is retried with another, up to three times."""
        port, auto = self._choose_port()
        for attempt in range(3):
            self.port = port
            t = time.monotonic()
            spawn(port)
            try:
                self._wait_ready(deadline)
            except EmbeddedServerError:
                exited = self._proc is not None and self._proc.poll() is not None
                clash = exited and self._start_failed_on_port_clash()
                self._abort_startup()
                if clash and auto and attempt < 2:
                    log.info("%s: port %s was taken meanwhile, retrying with another", self.kind, port)
                    port = free_port()
                    continue
                raise
            self.timings["start"] = time.monotonic() - t
            return
