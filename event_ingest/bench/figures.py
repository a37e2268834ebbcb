"""What a live window measured, per source: at the source (requests, pauses, gaps) and in Postgres (lag, lost).

Every figure is read where it happens, never from the consumer's counters: arrivals from the
source's own record of its requests (``Fleet.observed``), lag from each stored row's
``ingested_at`` against the ``created_at`` its source put in the payload, lost from the ids the
source served against the rows stored. Charts of the same: lag over time, and every gap.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psycopg

from ..core.percentile import percentile


@dataclass(frozen=True)
class Observed:
    """What one source saw, epoch seconds."""

    # Each /events request's arrival: the earliest stamp the source has for it (the kernel's, where kept).
    arrivals: list[float]
    served_ids: list[int]
    # The same requests, in the same order, as the server's own code stamped them when it read them;
    # None where ``arrivals`` are already that (the project's mock).
    app_stamps: list[float] | None = None


class Fleet(Protocol):
    names: list[str]

    def observed(self, name: str) -> Observed: ...


@dataclass
class SourceFigures:
    source: str
    requests: int
    ratio: float  # requests / (max rate x window)
    longest_pause_s: float
    longest_pause_at: float | None
    pause_at_kill_s: float | None  # the gap at the source that spans the kill, if one was made
    gaps_under_interval: int
    min_gap_ms: float | None
    lag_p50_s: float | None
    lag_p99_s: float | None
    lag_max_s: float | None
    events: int
    served: int
    lost: int
    # Judged on the server's own stamps too, where the arrivals are the kernel's: how far they disagree.
    gaps_under_interval_app: int | None = None
    app_late_p99_ms: float | None = None  # kernel receive -> the server reading the request
    gaps: list[float] = field(default_factory=list, repr=False)  # every gap at the source, s
    lag_series: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (created, lag) per event

    def row(self) -> dict:
        return {
            "source": self.source,
            "requests": self.requests,
            "ratio": round(self.ratio, 4),
            "longest_pause_s": round(self.longest_pause_s, 3),
            **({"pause_at_kill_s": round(self.pause_at_kill_s, 3)} if self.pause_at_kill_s is not None else {}),
            "lag_p50_s": self.lag_p50_s,
            "lag_p99_s": self.lag_p99_s,
            "lag_max_s": self.lag_max_s,
            "gaps_under_200ms": self.gaps_under_interval,
            "events": self.events,
            "lost": self.lost,
            **({"gaps_under_200ms_app": self.gaps_under_interval_app} if self.app_late_p99_ms is not None else {}),
            **({"app_late_p99_ms": self.app_late_p99_ms} if self.app_late_p99_ms is not None else {}),
        }


LAG_SQL = """
SELECT event_id, (payload->>'created_at')::float8, extract(epoch FROM ingested_at)::float8
FROM events
WHERE source = %(source)s AND (payload->>'created_at')::float8 BETWEEN %(t0)s AND %(t1)s
"""


def measure(
    fleet: Fleet,
    events_url: str,
    t0: float,
    t1: float,
    *,
    interval_s: float = 0.2,
    max_rate: float = 5.0,
    killed_at: float | None = None,
) -> list[SourceFigures]:
    """Per source, over the window [t0, t1] (unix seconds): at the source, then in Postgres."""
    figures = []
    with psycopg.connect(events_url) as conn:
        for name in fleet.names:
            seen = fleet.observed(name)
            app = seen.app_stamps or seen.arrivals
            inside = sorted((a, s) for a, s in zip(seen.arrivals, app) if t0 <= a <= t1)
            arrivals = [a for a, _ in inside]
            app_arrivals = sorted(s for _, s in inside)
            edges = [t0, *arrivals, t1]  # a pause at either end of the window counts too
            pauses = [(b - a, a) for a, b in zip(edges, edges[1:])]
            longest, longest_at = max(pauses)
            at_kill = next(
                (gap for gap, start in pauses if killed_at is not None and start <= killed_at < start + gap), None
            )
            gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
            rows = conn.execute(LAG_SQL, {"source": name, "t0": t0, "t1": t1 - 3 * interval_s}).fetchall()
            lags = [ing - created for _, created, ing in rows]
            # Read the cursor before the rows: a page served but not committed yet (in flight now, or
            # dropped by a drain that was stopped) lies above the cursor and will be fetched again by
            # the next holder - not lost. Lost is served, at or below the cursor, and not stored.
            state = conn.execute("SELECT cursor FROM source_state WHERE source = %s", (name,)).fetchone()
            cursor = state[0] if state else 0
            stored = {r[0] for r in conn.execute("SELECT event_id FROM events WHERE source = %s", (name,))}
            served = [i for i in seen.served_ids if i <= cursor]
            figures.append(
                SourceFigures(
                    source=name,
                    requests=len(arrivals),
                    ratio=len(arrivals) / (max_rate * (t1 - t0)),
                    longest_pause_s=longest,
                    longest_pause_at=longest_at,
                    pause_at_kill_s=at_kill,
                    gaps_under_interval=sum(1 for g in gaps if g < interval_s),
                    min_gap_ms=round(min(gaps) * 1000, 3) if gaps else None,
                    lag_p50_s=round(statistics.median(lags), 3) if lags else None,
                    lag_p99_s=round(percentile(lags, 0.99), 3) if lags else None,
                    lag_max_s=round(max(lags), 3) if lags else None,
                    events=len(rows),
                    served=len(served),
                    lost=len(set(served) - stored),
                    gaps_under_interval_app=(
                        sum(1 for a, b in zip(app_arrivals, app_arrivals[1:]) if b - a < interval_s)
                        if seen.app_stamps is not None
                        else None
                    ),
                    app_late_p99_ms=(
                        round(percentile([s - a for a, s in inside], 0.99) * 1000, 3)
                        if seen.app_stamps is not None and inside
                        else None
                    ),
                    gaps=gaps,
                    lag_series=[(created, ing - created) for _, created, ing in rows],
                )
            )
    return figures


def lag_chart(
    path: Path,
    figures: list[SourceFigures],
    *,
    t0: float,
    marks: dict[str, list[float]],
    title: str,
    max_sources: int = 12,
) -> Path:
    """Lag (event made -> row committed) over time per source, worst per second; vertical lines at
    the moments in ``marks`` (handoffs, a kill)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5), dpi=100)
    try:
        for fig_ in figures[:max_sources]:
            worst: dict[int, float] = {}
            for created, lag in fig_.lag_series:
                second = int(created - t0)
                worst[second] = max(worst.get(second, 0.0), lag)
            xs = sorted(worst)
            ax.plot(xs, [worst[x] for x in xs], linewidth=0.8, label=fig_.source)
        styles = ["--", ":", "-."]
        for i, (label, moments) in enumerate(marks.items()):
            for j, moment in enumerate(moments):
                ax.axvline(
                    moment - t0,
                    color="grey" if i == 0 else "red",
                    linestyle=styles[i % 3],
                    linewidth=0.8,
                    label=label if j == 0 else None,
                )
        ax.set_xlabel("seconds into the window")
        ax.set_ylabel("lag, s (worst event per second)")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=2, loc="upper right")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def gap_histogram(path: Path, figures: list[SourceFigures], *, title: str) -> Path:
    """Every gap between two requests at the sources, all sources together (log count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps_ms = [g * 1000 for f in figures for g in f.gaps]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if gaps_ms:
            top = max(gaps_ms)
            bins: list[float] = [150 + 5 * i for i in range(int((min(top, 600) - 150) / 5) + 2)]
            if top > 600:
                bins.append(top + 1)
            ax.hist(gaps_ms, bins=bins, log=True)
        ax.axvline(200, color="red", linestyle="--", linewidth=0.8, label="200 ms rule")
        ax.set_xlabel("gap between two requests at the source, ms (last bin: all longer)")
        ax.set_ylabel("count (log)")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
