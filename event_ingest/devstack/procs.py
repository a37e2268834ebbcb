"""Processes and ports: one home for starting, finding, signalling, stopping and measuring
the processes we run, and for choosing the ports they listen on.

Used by the embedded servers, the dev stack (start, stop, sweep what is left), the benchmarks
(kill a whole deployment, sample CPU and memory) and the chaos harness. Finding and measuring
read /proc (Linux); starting and stopping work wherever POSIX signals do.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Everything local listens on loopback only.
HOST = "127.0.0.1"

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, start time) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields_ = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields_[0], int(fields_[1]), int(fields_[2]), int(fields_[19])


def alive(pid: int, start_time: int | None = None) -> bool:
    """Running and not a zombie; with start_time, also still the same process (no pid reuse)."""
    st = proc_stat(pid)
    if st is None and start_time is None and pid > 0 and not os.path.isdir("/proc"):
        return _exists(pid)  # macOS / BSD: no /proc to read the state from
    return st is not None and st[0] not in ("Z", "X") and (start_time is None or st[3] == start_time)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    return True


def start_time(pid: int) -> int | None:
    st = proc_stat(pid)
    return st[3] if st else None


def process_tree(roots: list[int], pgid: int | None = None) -> dict[int, int]:
    """{pid: start time} of `roots`, all their descendants, and every member of process group
    `pgid`. A snapshot of /proc: taken before signalling, it still names the grandchildren
    that get re-parented to init when their parent exits first."""
    table: dict[int, tuple[str, int, int, int]] = {}
    if not os.path.isdir("/proc"):  # not Linux: the process group is all we can find
        return {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st[1], []).append(pid)
    found: dict[int, int] = {}
    todo = [p for p in roots if p in table]
    todo += [p for p, st in table.items() if pgid is not None and st[2] == pgid]
    while todo:
        pid = todo.pop()
        if pid in found or pid == os.getpid():
            continue
        found[pid] = table[pid][3]
        todo.extend(children.get(pid, ()))
    return found


def signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_hard(pid: int) -> None:
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
    signal_pid(pid, signal.SIGKILL)


def stop_child(proc: subprocess.Popen, sig: int, timeout: float) -> bool:
    """Stop a child we started: `sig`, up to `timeout` to exit, then SIGKILL for it and its
    process group. True if it exited of itself (or had already)."""
    if proc.poll() is not None:
        return True
    signal_pid(proc.pid, sig)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        kill_hard(proc.pid)
        proc.wait(10)
        return False


def stop_pid(pid: int, sig: int, timeout: float) -> None:
    """Stop a process that is not our child (cannot wait() for it): signal, poll, kill."""
    signal_pid(pid, sig)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            log.warning("pid %s did not exit within %.0fs of signal %s; killing it", pid, timeout, sig)
            kill_hard(pid)
            deadline = time.monotonic() + 5
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        time.sleep(0.05)


def sweep(tree: dict[int, int], pgid: int | None, wait_s: float) -> list[int]:
    """Give the processes of `tree` up to `wait_s` to exit, then SIGKILL what is left of them
    and of the process group; returns the pids that had to be killed."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(alive(p, t) for p, t in tree.items()):
        time.sleep(0.1)
    # Anything they started meanwhile (a run worker launched during shutdown) goes too.
    tree = {**tree, **process_tree([p for p, t in tree.items() if alive(p, t)], pgid)}
    killed = [p for p, t in tree.items() if alive(p, t)]
    if pgid is not None:
        killpg(pgid, signal.SIGKILL)
    for pid in killed:
        if alive(pid, tree[pid]):
            signal_pid(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p, tree[p]) for p in killed):
        time.sleep(0.05)
    return killed


@dataclass(frozen=True)
class Usage:
    """CPU seconds used so far and memory now, summed over some processes."""

    cpu_s: float
    rss_bytes: int
    pss_bytes: int
    processes: int


def usage(pids: Iterable[int]) -> Usage:
    """Summed over the live ones among ``pids``. PSS (proportional set size) shares each page
    among the processes that map it, so it adds up across processes where RSS double-counts."""
    cpu = 0.0
    rss = pss = count = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
            rss += int(fields[21]) * PAGE_SIZE
            pss += _pss(pid)
            count += 1
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return Usage(cpu, rss, pss, count)


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def name_and_cwd(pid: int) -> tuple[str | None, Path | None]:
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


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------- starting


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start `cmd` in its own session (process group), stdin from /dev/null: a Ctrl-C in the
    terminal reaches us only, and we stop the child (and whatever it starts) in order.
    Raises OSError if `cmd` cannot be executed."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)


# ------------------------------------------------------------------------------- ports


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that is free right now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    """Nothing listens on host:port and a server could bind it.

    SO_REUSEADDR is set for the test bind, as the servers do, so a port whose old
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


# ------------------------------------------- children we started, each leading its own process group


def signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Signal the process group a child of ours leads (started with ``start_new_session=True``)."""
    if proc.poll() is None:
        killpg(proc.pid, sig)


def kill_group(proc: subprocess.Popen[Any], wait_s: float = 10.0) -> bool:
    """SIGKILL a child's process group and reap the child; False if it did not die in time."""
    signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(wait_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def terminate_group(proc: subprocess.Popen[Any], wait_s: float = 5.0) -> bool:
    """SIGTERM a child's process group, then SIGKILL it if it is still there after ``wait_s``."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(wait_s)
        return True
    except subprocess.TimeoutExpired:
        return kill_group(proc)


def restartable_port(host: str = HOST) -> int:
    """A free port *below* the ephemeral range, for a server that is stopped and started again on it.

    Clients keep reconnecting to a stopped server's port. A connect() to a closed port in the
    ephemeral range can be given that very port as its source port and connect to itself (TCP
    simultaneous open), and then the restart finds its port taken.
    """
    import random

    def bindable(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
                return True
            except OSError:
                return False

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low > 11_000:
        pick = random.SystemRandom()
        for _ in range(50):
            port = pick.randrange(10_000, low)
            if bindable(port):
                return port
    return free_port(host)  # the kernel's choice, ephemeral
