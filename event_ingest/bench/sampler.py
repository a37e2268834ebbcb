"""CPU and memory of named groups of processes (from /proc), and any probes, sampled through a window."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

from ..devstack.procs import Usage, usage


@dataclass
class Sample:
    at: float
    usage: dict[str, Usage]
    probes: dict[str, float]


class Sampler(threading.Thread):
    """CPU and memory of named groups of processes, and the values of ``probes``, every ``every_s`` s."""

    def __init__(self, groups: dict, probes: dict | None = None, every_s: float = 5.0) -> None:
        super().__init__(daemon=True, name="sampler")
        self.groups = groups  # name -> callable returning pids
        self.probes = probes or {}  # name -> callable returning a number
        self.every_s = every_s
        self.samples: list[Sample] = []
        self._halt = threading.Event()

    def _sample(self) -> Sample:
        values = {}
        for name, probe in self.probes.items():
            try:
                values[name] = probe()
            except Exception:  # a probe failing (a service restarting) loses one sample, not the run
                pass
        return Sample(time.time(), {name: usage(pids()) for name, pids in self.groups.items()}, values)

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(self._sample())
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.samples.append(self._sample())

    def probe_summary(self) -> dict[str, dict]:
        out = {}
        for name in self.probes:
            values = [s.probes[name] for s in self.samples if name in s.probes]
            if values:
                out[name] = {"mean": round(statistics.mean(values), 2), "max": max(values)}
        return out

    def summary(self) -> dict[str, dict]:
        """Per group: CPU as cores used over the whole window, memory (PSS and RSS) mean and max."""
        if len(self.samples) < 2:
            return {}
        first, last = self.samples[0], self.samples[-1]
        span = last.at - first.at
        out = {}
        for name in self.groups:
            pss = [s.usage[name].pss_bytes for s in self.samples]
            rss = [s.usage[name].rss_bytes for s in self.samples]
            procs = [s.usage[name].processes for s in self.samples]
            # CPU of processes that ended meanwhile is lost to this sum; sampled often, the error is small.
            cpu = sum(
                max(0.0, b.usage[name].cpu_s - a.usage[name].cpu_s) for a, b in zip(self.samples, self.samples[1:])
            )
            out[name] = {
                "cpu_cores": round(cpu / span, 3) if span else None,
                "pss_mb_mean": round(statistics.mean(pss) / 2**20, 1),
                "pss_mb_max": round(max(pss) / 2**20, 1),
                "rss_mb_max": round(max(rss) / 2**20, 1),
                "processes_max": max(procs),
            }
        return out
