"""CPU by part, read from /proc: which processes spent the CPU a window of requests cost.

    ledger = CpuLedger(classify)        # classify(table) -> {pid: part} for the processes of interest
    ledger.start(t0) ... ledger.stop()  # samples every second in a thread of its own
    ledger.cpu_s()                      # {part: CPU seconds spent inside the window}

Summing a group's CPU at two moments and subtracting (what the live cases' Sampler does for its
cores figure) goes wrong exactly where this bench looks: a run that starts inside the window
brings its whole history into the second sum, a run that ends inside it takes its history out,
and a process that lives less than a sampling interval (a Postgres backend for one query) is
never seen at all. So every process is accounted for on its own, by (pid, start time) - a pid the
kernel reuses is a new process:

* seen at the window's start, it counts from there (its CPU then is its baseline);
* started inside the window, it counts whole - starting a run, importing Dagster and the
  project, is part of what a handoff costs;
* ended inside the window: its parent reaped it, and the kernel added its whole CPU, and that of
  everything it had reaped, to the parent's cutime/cstime. The parent's growth in those, less
  what was last seen of the children that went, is what the samples missed: children that came
  and went between two samples, and the last moments of the ones that were seen. It goes to the
  part ``reaped_into`` names for the parent's part (the postmaster's: its short-lived backends).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def boot_time() -> float:
    """When the machine booted, epoch seconds (process start times are counted from it)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgrp: int
    start_ticks: int  # since boot
    cpu_s: float  # its own user + system, so far
    children_s: float  # user + system of the children it has reaped (and theirs), so far


def snapshot() -> dict[int, Proc]:
    """Every process now, from one pass over /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        # proc(5) numbers the fields from 1 with state 3rd: fields[i] is field i + 3.
        table[int(entry)] = Proc(
            pid=int(entry),
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            start_ticks=int(fields[19]),
            cpu_s=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            children_s=(int(fields[13]) + int(fields[14])) / CLOCK_TICKS,
        )
    return table


def descendants(table: dict[int, Proc], roots: list[int], pgid: int | None = None) -> list[int]:
    """``roots``, every process under them (parents before children), and then every other member of
    process group ``pgid`` (a grandchild re-parented to init when its parent died)."""
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    order: list[int] = []
    seen: set[int] = set()
    todo = [p for p in roots if p in table]
    todo += sorted(p.pid for p in table.values() if pgid is not None and p.pgrp == pgid)
    while todo:
        pid = todo.pop(0)
        if pid not in seen:
            seen.add(pid)
            order.append(pid)
            todo[:0] = children.get(pid, ())  # depth first: a process, then what it started
    return order


@dataclass
class Tracked:
    part: str
    ppid: int
    base_s: float  # its own CPU at the window's start (0 if it started inside)
    base_children_s: float
    cpu_s: float  # as last seen
    children_s: float
    previous_s: float  # one sample before
    last_sample: int  # the number of the sample it was last seen in


class CpuLedger(threading.Thread):
    def __init__(
        self,
        classify: Callable[[dict[int, Proc]], dict[int, str]],
        *,
        reaped_into: dict[str, str] | None = None,
        every_s: float = 1.0,
    ) -> None:
        super().__init__(daemon=True, name="cpu-ledger")
        self.classify = classify
        self.reaped_into = reaped_into or {}
        self.every_s = every_s
        self._boot = boot_time()
        self._t0 = 0.0
        self._samples = 0
        self._seen: dict[tuple[int, int], Tracked] = {}  # by (pid, start ticks)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.errors: list[str] = []

    def start(self, t0: float | None = None) -> None:
        self._t0 = time.time() if t0 is None else t0
        self.sample()
        super().start()

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.sample()

    def sample(self) -> None:
        table = snapshot()
        try:
            parts = self.classify(table)
        except Exception as exc:  # a service restarting loses one sample, and says so
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._samples += 1
            for pid, part in parts.items():
                proc = table.get(pid)
                if proc is None:
                    continue
                row = self._seen.get((pid, proc.start_ticks))
                if row is None:
                    inside = self._boot + proc.start_ticks / CLOCK_TICKS >= self._t0
                    self._seen[(pid, proc.start_ticks)] = Tracked(
                        part=part,
                        ppid=proc.ppid,
                        base_s=0.0 if inside else proc.cpu_s,
                        base_children_s=0.0 if inside else proc.children_s,
                        cpu_s=proc.cpu_s,
                        children_s=proc.children_s,
                        previous_s=proc.cpu_s,
                        last_sample=self._samples,
                    )
                else:
                    row.previous_s, row.cpu_s, row.children_s = row.cpu_s, proc.cpu_s, proc.children_s
                    # The latest word on its part: a Postgres backend names its database only once connected.
                    row.part, row.ppid, row.last_sample = part, proc.ppid, self._samples

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds per part inside the window: what was seen, and what the parents reaped unseen."""
        out: dict[str, float] = {}
        with self._lock:
            rows = list(self._seen.items())
            last = self._samples
        by_pid = {pid: row for (pid, _), row in sorted(rows, key=lambda kv: kv[0][1])}  # the latest per pid
        reaped_seen: dict[int, float] = {}  # parent pid -> whole CPU of its children seen, then gone
        for _, row in rows:
            out[row.part] = out.get(row.part, 0.0) + max(0.0, row.cpu_s - row.base_s)
            if row.last_sample < last:
                reaped_seen[row.ppid] = reaped_seen.get(row.ppid, 0.0) + row.cpu_s + row.children_s
        for pid, row in by_pid.items():
            unseen = (row.children_s - row.base_children_s) - reaped_seen.get(pid, 0.0)
            if unseen > 0:
                part = self.reaped_into.get(row.part, row.part)
                out[part] = out.get(part, 0.0) + unseen
        return out

    def processes(self) -> dict[str, int]:
        """How many distinct processes each part had over the window (the ones sampled)."""
        out: dict[str, int] = {}
        with self._lock:
            for row in self._seen.values():
                out[row.part] = out.get(row.part, 0) + 1
        return out

    def busiest(self, part: str, alive: set[int]) -> int | None:
        """The process of ``part`` among ``alive`` that used the most CPU between the last two samples."""
        with self._lock:
            rows = [(row.cpu_s - row.previous_s, pid) for (pid, _), row in self._seen.items() if row.part == part]
        rows = [r for r in rows if r[1] in alive]
        return max(rows)[1] if rows else None
