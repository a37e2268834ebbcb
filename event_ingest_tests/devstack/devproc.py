"""Running `event-ingest dev` as a user does (a subprocess with no EVENT_INGEST_* URLs set), and
looking at what it left: the helpers of test_dev.py and test_dev_dagster.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from event_ingest.devstack.procs import free_port

ENV_VARS = (
    "EVENT_INGEST_DATABASE_URL",
    "EVENT_INGEST_REDIS_URL",
    "EVENT_INGEST_SOURCES",
    "EVENT_INGEST_DAGSTER_DATABASE_URL",
    "DAGSTER_HOME",
)
SOURCES = ["source1", "source2", "source3"]


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(n: int = 3, avoid: tuple[int, ...] = ()) -> int:
    """A port p such that p .. p+n-1 are all free now."""
    for _ in range(100):
        base = free_port()
        if base + n <= 65535 and all(bindable(base + i) and base + i not in avoid for i in range(n)):
            return base
    raise RuntimeError("no run of free ports found")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> dict[int, str]:
    """{pid: start time} of `root` and all its descendants, from /proc."""
    parent: dict[int, int] = {}
    start: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parent[int(entry)], start[int(entry)] = int(st[1]), st[19]
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in start and pid not in tree:
            tree[pid] = start[pid]
            todo += [child for child, ppid in parent.items() if ppid == pid]
    return tree


def still_running(tree: dict[int, str]) -> list[str]:
    """The processes of `tree` that are still there (a zombie counts as gone; so does a pid now
    used by another process)."""
    left = []
    for pid, started in tree.items():
        st = _stat(pid)
        if st is not None and st[0] not in ("Z", "X") and st[19] == started:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            except OSError:
                cmd = "?"
            left.append(f"{pid} {cmd}")
    return left


class Dev:
    """`python -m event_ingest.cli dev ...` in tmp_path, output in a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.state_dir = tmp_path / "state"
        self.out_path = tmp_path / f"dev-{time.monotonic_ns()}.out"
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        self.t0 = time.monotonic()
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "event_ingest.cli", "dev", "--data-dir", str(self.state_dir), *args],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-n:])

    def stack(self, timeout: float, ready: bool = False) -> dict:
        """stack.json once written (and, with `ready`, once the UI answered)."""
        path = self.state_dir / "stack.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"event-ingest dev exited with {self.proc.returncode}:\n{self.tail()}"
            try:
                data = json.loads(path.read_text())
                if data["ready"] or not ready:
                    return data
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"no {'ready ' if ready else ''}stack.json within {timeout}s:\n{self.tail()}")

    def interrupt(self, timeout: float, sig: int = signal.SIGINT) -> int:
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"event-ingest dev did not exit within {timeout}s of {sig!r}:\n{self.tail()}"
            ) from None

    def cleanup(self) -> None:
        """After a failed test: stop it, and whatever it left, hard."""
        tree = process_tree(self.proc.pid)
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        for line in still_running(tree):
            pid = int(line.split()[0])
            try:
                if os.getpgid(pid) == pid:  # a session leader: its whole group
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def status_json(env: dict[str, str]) -> list[dict]:
    res = subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", "status", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def events_per_source(database_url: str) -> dict[str, int]:
    try:
        with psycopg.connect(database_url, connect_timeout=3) as conn:
            rows = conn.execute("SELECT source, count(*) FROM events GROUP BY source").fetchall()
    except psycopg.Error:
        return {}
    return dict(rows)
