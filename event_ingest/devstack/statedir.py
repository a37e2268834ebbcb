"""The dev stack's state dir: one stack per dir (its lock), the stack file the other commands
read, and the leftovers of a run that was killed hard.

    postgres/  redis/       server data
    dagster_home/           DAGSTER_HOME
    logs/                   one log per child
    sources.yaml            generated when the mock sources are used
    stack.json              URLs, pids and log paths of the running stack (removed on a clean stop)
    dev.lock                held while a dev stack runs on this state dir

The lock is what makes the rest safe: holding it proves that a server or child still running on
this dir is a leftover of a run killed hard (stop it), not another stack's (refuse to start).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import DevError
from .procs import alive, process_tree, signal_pid, sweep

DEFAULT_STATE_DIR = ".event-ingest"
STACK_FILE = "stack.json"
LOCK_FILE = "dev.lock"


class StateDir:
    """A state dir; `open()` creates and locks it, `close()` removes the stack file and unlocks."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().resolve()
        self.logs = self.path / "logs"
        self.stack_file = self.path / STACK_FILE
        self._lock_fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def open(self) -> None:
        """Create the dir and take its lock; one line naming the holder if another stack has it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DevError(
                f"event-ingest dev: another dev stack (pid {holder}) is running on "
                f"{self.path}; stop it first (Ctrl-C there) or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> bool:
        """Remove the stack file and release the lock (only if we hold it: else the file is
        another run's). True: nothing here can fail to stop."""
        if self._lock_fd is not None:
            self.stack_file.unlink(missing_ok=True)
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
        return True

    def __enter__(self) -> StateDir:
        self.open()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def stop_leftovers(self, say: Callable[[str], None]) -> None:
        """Stop the children a hard-killed earlier run left behind (they would hold the ports), as
        its stack file names them. Postgres and Redis leftovers are handled by the servers' own
        on_orphan="stop". Only while we hold the lock."""
        if not self.locked:
            raise RuntimeError("stop_leftovers() needs the state dir's lock")
        try:
            old = json.loads(self.stack_file.read_text())
        except (OSError, ValueError):
            return
        entries = [*old.get("sources", {}).get("children", []), old.get("dagster") or {}]
        for entry in entries:
            pid, start = entry.get("pid"), entry.get("start_time")
            if isinstance(pid, int) and start is not None and alive(pid, start):
                say(f"stopping {entry.get('name')} (pid {pid}) left running by an earlier run")
                tree = process_tree([pid], pgid=pid)
                signal_pid(pid, signal.SIGTERM)
                sweep(tree, pid, wait_s=10)
        self.stack_file.unlink(missing_ok=True)

    def write_stack(self, data: dict[str, Any]) -> None:
        """Readers never see half a file. Owner-only: URLs from the environment may hold passwords."""
        tmp = self.stack_file.with_name(self.stack_file.name + ".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.stack_file)
