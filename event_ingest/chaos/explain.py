"""Every gap under the interval at a source, explained: what each side of the pair was, and why.

For each pair of consecutive requests that reached a source less than ``min_interval_ms`` apart,
on either stamp the source keeps (the kernel's receive time of the request's bytes, and the
handler's own stamp; ``mocksource/arrival.py``), this puts side by side, per request:

* both arrival stamps and the ``lastId`` asked for;
* the request as its consumer saw it (``core/drain.py``'s trace, one JSON line per request): the
  consumer and epoch, when it asked the gate, when the grant was read, the grant and the close on
  Redis' clock, when the request was handed to HTTP, when the response began, what the close
  deferred;
* the fault in progress (or the last one before).

All times are seconds on this host's monotonic clock, from the start of the fault phase; Redis'
clock (wall time on this host: Redis runs here) is brought onto it with the offset read at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

Arrival = dict[str, Any]  # {"at": handler stamp, "kernel": kernel stamp or None, "last_id": str or None}


def read_traces(log_dir: Path) -> list[dict]:
    lines = []
    for path in sorted(log_dir.glob("trace-*.jsonl")):
        for raw in path.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # a consumer killed mid-line
            if isinstance(line, dict):
                line["worker"] = path.stem.removeprefix("trace-")
                lines.append(line)
    return lines


def close_pairs(arrivals: list[Arrival], stamp: str, interval_ms: float) -> list[tuple[Arrival, Arrival, float]]:
    """Consecutive arrivals (ordered by ``stamp``) less than the interval apart, with their gap in ms."""
    stamped = sorted((a for a in arrivals if a.get(stamp) is not None), key=lambda a: a[stamp])
    pairs = []
    for first, second in zip(stamped, stamped[1:]):
        gap_ms = (second[stamp] - first[stamp]) * 1000
        if gap_ms < interval_ms:
            pairs.append((first, second, gap_ms))
    return pairs


def explain(
    source: str,
    arrivals: list[Arrival],
    interval_ms: float,
    traces: list[dict],
    fault_log: list[dict],
    started: float,
) -> list[dict]:
    """One entry per close pair (on either stamp) at ``source``."""
    wall_minus_mono = time.time() - time.monotonic()

    def rel(mono: float | None) -> float | None:
        return None if mono is None else round(mono - started, 4)

    def rel_redis(us: int | None) -> float | None:
        return None if us is None else round(us / 1e6 - wall_minus_mono - started, 4)

    mine = sorted((t for t in traces if t.get("src") == source and t.get("sent") is not None), key=lambda t: t["sent"])
    # Each traced request explains one arrival: in arrival order, the latest request not yet matched that
    # asked for the same lastId and was handed to HTTP before the arrival. A request whose "sent" is long
    # before its arrival was held between that moment and the socket (a paused process).
    used: set[int] = set()
    matched: dict[int, dict | None] = {}
    for arrival in sorted(arrivals, key=lambda a: a["kernel"] if a.get("kernel") is not None else a["at"]):
        seen = arrival["kernel"] if arrival.get("kernel") is not None else arrival["at"]
        candidates = [
            (i, t)
            for i, t in enumerate(mine)
            if i not in used and str(t.get("last_id")) == str(arrival.get("last_id")) and t["sent"] <= seen
        ]
        if candidates:
            i, t = candidates[-1]
            used.add(i)
            matched[id(arrival)] = t
        else:
            matched[id(arrival)] = None

    def request(arrival: Arrival) -> dict:
        seen = arrival["kernel"] if arrival.get("kernel") is not None else arrival["at"]
        sent = matched.get(id(arrival))
        entry: dict[str, Any] = {"arrived_kernel": rel(arrival.get("kernel")), "arrived_handler": rel(arrival["at"])}
        entry["last_id"] = arrival.get("last_id")
        if sent is None:
            entry["consumer"] = "no traced request matches (its consumer killed before the trace line was written?)"
            return entry
        entry.update(
            worker=sent.get("worker"),
            consumer=sent.get("consumer"),
            epoch=sent.get("epoch"),
            asked=rel(sent.get("asked")),
            grant_read=rel(sent.get("granted")),
            grant_redis=rel_redis(sent.get("granted_redis_us")),
            sent=rel(sent.get("sent")),
            sent_to_arrival_ms=round((seen - sent["sent"]) * 1000, 1),
            answered=rel(sent.get("answered")),
            closed=rel(sent.get("closed")),
            closed_redis=rel_redis(sent.get("closed_redis_us")),
            defer_s=sent.get("defer_s"),
            outcome=sent.get("reason") or sent.get("status") or sent.get("kind"),
        )
        return entry

    def faults_around(t0: float, t1: float) -> list[str]:
        during = [f for f in fault_log if f.get("from", 0) <= t1 and f.get("until", 0) >= t0 - 1.0]
        if not during:
            before = [f for f in fault_log if f.get("from", 0) <= t1]
            during = before[-1:]
        return [f"{f['kind']} ({rel(f.get('from'))}..{rel(f.get('until'))}): {f['detail']}" for f in during]

    out = []
    seen_pairs = set()
    for stamp in ("kernel", "at"):
        for first, second, gap_ms in close_pairs(arrivals, stamp, interval_ms):
            key = (id(first), id(second))
            if key in seen_pairs:
                continue
            seen_pairs.add(key)
            other = "at" if stamp == "kernel" else "kernel"
            other_gap = (
                round(abs(second[other] - first[other]) * 1000, 3)
                if first.get(other) is not None and second.get(other) is not None
                else None
            )
            out.append(
                {
                    "source": source,
                    "judged_on": "kernel receive time" if stamp == "kernel" else "handler stamp",
                    "gap_ms": round(gap_ms, 3),
                    "gap_ms_kernel" if other == "kernel" else "gap_ms_handler": other_gap,
                    "first": request(first),
                    "second": request(second),
                    "faults": faults_around(first[stamp], second[stamp]),
                }
            )
    return out


def format_violation(v: dict) -> str:
    """A few lines a reader can follow: the pair, then each request's timeline."""
    other = "gap_ms_kernel" if "gap_ms_kernel" in v else "gap_ms_handler"
    lines = [
        f"{v['source']}: two requests {v['gap_ms']:.1f} ms apart ({v['judged_on']}; "
        f"{other.removeprefix('gap_ms_')}: {v[other]} ms)"
    ]
    for side in ("first", "second"):
        r = v[side]
        fields = ", ".join(f"{k}={r[k]}" for k in r if r[k] is not None)
        lines.append(f"  {side}: {fields}")
    for fault in v["faults"]:
        lines.append(f"  fault: {fault}")
    return "\n".join(lines)
