"""The percentile the progress reports and the benchmarks both quote: the nearest rank, no interpolation
(a value that was measured, never one between two)."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The value at quantile ``q`` (0..1) of ``values`` (not empty), by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
