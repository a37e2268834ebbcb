"""A process under load, profiled from outside with py-spy: where its CPU goes.

    profiler = Profiler(out_dir / "run", pick=lambda: pid_or_None, seconds=60)
    profiler.begin()          # in a thread: py-spy dump, then py-spy record of pick()'s process
    ...
    profiler.end() -> {"pids", "seconds", "samples", "own": [...top 20], "total": [...top 20], "files"}

py-spy (PyPI: py-spy) reads the process's memory from outside; nothing is loaded into it. Samples
are taken with --nonblocking, so the process is not paused for each one: a paused run would send
its requests late, which is the very thing the bench measures (the price: now and then a torn
stack). Threads py-spy judges idle (waiting in a read, a sleep, a lock) are left out, its default,
so the samples show where the process spends CPU rather than where it waits.

A process can end before the profile's time is up (an `ingest` run hands its sources to its
successor): the profiler then asks ``pick`` again and records the next one for the time left,
and the segments are summed - the same code under the same load.

Files: ``<stem>-<n>-dump.txt`` (every thread's stack as segment n begins), ``<stem>.txt`` (all the
samples as collapsed stacks, root first: speedscope.app and flamegraph.pl open it), ``<stem>-top.txt``
(the top 20 functions by own time - the innermost frame of a sample - and by total time - anywhere
on its stack, counted once per sample).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

RATE_HZ = 100
TOP = 20
MIN_SEGMENT_S = 2.0


def py_spy() -> str | None:
    """The py-spy executable: beside this Python (a virtualenv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def top_functions(collapsed: str, n: int = TOP) -> dict:
    """Own and total samples per function from collapsed stacks ("root;...;leaf count" per line)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)

    def rows(counter: Counter[str]) -> list[dict]:
        ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]  # ties by name: the same every run
        return [
            {"function": name, "samples": count, "percent": round(100.0 * count / samples, 1)} for name, count in ranked
        ]

    return {"samples": samples, "own": rows(own), "total": rows(total)}


def top_text(summary: dict) -> str:
    pids = ", ".join(str(p) for p in summary["pids"])
    active = summary["samples"] / (RATE_HZ * max(summary["seconds"], 0.1))
    lines = [
        f"process {pids}: {summary['samples']} samples of active threads in {summary['seconds']} s "
        f"at {RATE_HZ}/s ({active:.2f} active threads on average)"
    ]
    for key, title in (("own", "own time (innermost frame)"), ("total", "total time (anywhere on the stack)")):
        lines += ["", f"top {TOP} by {title}:", f"{'%':>6}  {'samples':>8}  function"]
        lines += [f"{r['percent']:>6.1f}  {r['samples']:>8}  {r['function']}" for r in summary[key]]
    return "\n".join(lines) + "\n"


class Profiler:
    def __init__(self, stem: Path, pick: Callable[[], int | None], seconds: float, executable: str) -> None:
        self.stem = stem
        self.pick = pick
        self.seconds = seconds
        self.executable = executable
        self.pids: list[int] = []
        self.recorded_s = 0.0
        self.errors: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._record, daemon=True, name="profiler")

    def _file(self, suffix: str) -> Path:
        return self.stem.with_name(self.stem.name + suffix)

    def begin(self) -> None:
        self._thread.start()

    def _record(self) -> None:
        until = time.monotonic() + self.seconds
        while not self._halt.is_set() and until - time.monotonic() >= MIN_SEGMENT_S:
            pid = self.pick()
            if pid is None:
                self._halt.wait(1.0)
                continue
            n = len(self.pids)
            self.pids.append(pid)
            dump = subprocess.run(
                [self.executable, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True
            )
            self._file(f"-{n}-dump.txt").write_text(dump.stdout + dump.stderr)
            if self._halt.is_set():
                break
            started = time.monotonic()
            with open(self._file(f"-{n}-py-spy.log"), "ab") as log:
                self._proc = subprocess.Popen(
                    [self.executable, "record", "--pid", str(pid), "--rate", str(RATE_HZ)]
                    + ["--duration", str(max(1, round(until - time.monotonic())))]
                    + ["--format", "raw", "--nolineno", "--nonblocking", "--output", str(self._file(f"-{n}.txt"))],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                self._proc.wait()  # its --duration, or sooner if the process ends (or end() stops it)
            self.recorded_s += time.monotonic() - started
            if not self._file(f"-{n}.txt").exists():
                self.errors.append(f"py-spy wrote no profile of pid {pid}; see {self._file(f'-{n}-py-spy.log')}")

    def end(self) -> dict:
        """Stops recording (py-spy writes what it has on SIGINT) and sums the segments."""
        self._halt.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        self._thread.join(60)
        segments = [self._file(f"-{n}.txt") for n in range(len(self.pids))]
        collapsed = "\n".join(p.read_text().strip() for p in segments if p.exists()).strip()
        summary: dict = {"pids": self.pids, "seconds": round(self.recorded_s, 1), "errors": self.errors}
        if not collapsed:
            return {**summary, "error": "; ".join(self.errors) or "no process to profile was found"}
        self._file(".txt").write_text(collapsed + "\n")
        summary.update(top_functions(collapsed))
        self._file("-top.txt").write_text(top_text(summary))
        summary["files"] = {"collapsed": str(self._file(".txt")), "top": str(self._file("-top.txt"))}
        return summary
