"""A process the dev stack started (a mock source, `dagster dev`), in its own session."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DevError
from .procs import process_tree, spawn, start_time, stop_child, sweep


@dataclass
class Child:
    """A process we started, leading its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    start_time: int | None = None
    url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def spawn(
        cls, what: str, name: str, cmd: list[str], log_path: Path, url: str | None = None, **kwargs: Any
    ) -> Child:
        """Start `cmd` (see procs.spawn); one line naming `what` if it cannot be executed."""
        try:
            proc: subprocess.Popen[bytes] = spawn(cmd, **kwargs)
        except OSError as exc:
            raise DevError(f"event-ingest dev: cannot start {what} ({cmd[0]}): {exc}") from None
        return cls(name, proc, log_path, start_time(proc.pid), url)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_code(self) -> int | None:
        """None while it runs."""
        return self.proc.poll()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_time": self.start_time,
            "url": self.url,
            "log": str(self.log_path),
            **self.extra,
        }

    def log_tail(self, n: int = 5) -> str:
        """Its last `n` non-empty log lines, on one line."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return " | ".join(ln[:200] for ln in lines[-n:])

    def stop(self, say: Callable[[str], None], sig: int = signal.SIGTERM, timeout: float = 5) -> bool:
        """`sig`, then SIGKILL after `timeout`; then whatever is left of its process group.
        True if it exited of itself."""
        proc = self.proc
        if not stop_child(proc, sig, timeout):
            say(f"{self.name} (pid {proc.pid}) did not stop within {timeout:.0f}s; killed it")
            return False
        sweep(process_tree([proc.pid], pgid=proc.pid), proc.pid, wait_s=0)
        return True
