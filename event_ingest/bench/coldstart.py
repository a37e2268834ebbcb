"""Cold-start case: how soon does a drain's first request reach a new, an idle, and a lost source?

    event-ingest bench coldstart [--timeout-s 10] [--quick]

Three drains against mock sources, each timed from the moment the drain starts to the first
request's arrival stamped AT THE SOURCE:

* new: a source never seen in a Redis whose memory is whole (the gate's era is older than one
  hold) - served at once;
* idle: a source whose gate record has expired (what an hour without requests does; played by
  deleting the record) - served at once;
* lost: Redis has lost its memory (FLUSHALL, restart: the era is gone) - nobody knows what
  request may be in flight, so the first request waits one hold (timeout_s + interval).

The last row is the safety that the first two must not cost: it is measured in the same run.
Uses a Redis of its own (embedded) unless EVENT_INGEST_REDIS_URL is set; the lost case then only
deletes this run's keys and an era key of its own, never the shared one.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid
from typing import TYPE_CHECKING

from ..config import SourceConfig
from . import report
from .services import services

if TYPE_CHECKING:
    import redis

    from ..core import Store

HELP = "time from a drain's start to its first request at the source: new, idle and lost gate state"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=10.0,
        help="the sources' timeout_s; the hold after a loss is this plus the interval (default 10)",
    )
    report.add_output_arguments(parser, "CI smoke run: timeout_s 2 (a 2.2 s hold after the loss)")


def run(args: argparse.Namespace) -> int:
    from ..core import Store, connect_redis
    from ..core.gate_lua import backdate_era
    from ..mocksource import MockSource, MockSourceConfig

    if args.quick:
        args.timeout_s = 2.0
    out = report.output_dir(args.out, "coldstart")
    suffix = uuid.uuid4().hex[:6]
    era_key = f"event-ingest:bench-era:{suffix}"  # ours: playing a loss must not disturb anyone else
    rows = []
    with services() as (database_url, redis_url), Store(database_url) as store:
        client = connect_redis(redis_url)
        for case in ("new", "idle", "lost"):
            name = f"cold_{case}_{suffix}"
            store.apply_schema([name])
            with MockSource(MockSourceConfig(name=name, backlog=5)) as mock:
                source = SourceConfig(name=name, url=mock.url, timeout_s=args.timeout_s)
                backdate_era(client, era_key, 3600)  # this Redis' memory whole for an hour
                if case == "idle":
                    _drain(source, store, client, era_key)  # a first life...
                    client.delete(f"event-ingest:gate:{name}")  # ...then its record expires
                elif case == "lost":
                    client.delete(era_key, f"event-ingest:gate:{name}")  # what FLUSHALL does
                mock.reset_stats()
                started_wall = time.time()
                _drain(source, store, client, era_key)
                stats = mock.stats(include_arrivals=True)
                offset = stats["clock"]["wall"] - stats["clock"]["monotonic"]
                first = stats["arrivals"][0] + offset if stats["arrivals"] else math.nan
                hold = args.timeout_s + source.min_interval_s
                rows.append(
                    {
                        "case": case,
                        "first_request_after_s": round(first - started_wall, 3),
                        "hold_s": hold,
                        "requests": stats["requests"],
                        "expected": "at once" if case != "lost" else f"after one hold ({hold:g} s)",
                    }
                )
            store.forget_source(name)
        client.delete(era_key)
        client.close()
    report.print_table(rows, title="bench coldstart: drain start -> first request at the source")
    report.write_json(out / "coldstart.json", {"rows": rows})
    lost = next(r for r in rows if r["case"] == "lost")
    safe = lost["first_request_after_s"] >= lost["hold_s"] - 0.05  # never early after a loss
    print("safe (after a loss, the first request waited the hold)" if safe else "UNSAFE: a request went out early")
    return 0 if safe else 1


def _drain(source: SourceConfig, store: Store, client: redis.Redis, era_key: str) -> None:
    """One drain to the head, its gate pointed at this run's own era key."""
    from ..core import DrainOptions
    from ..core.drain import Drain

    drain = Drain(source, store=store, redis_client=client, options=DrainOptions(max_seconds=60))
    drain.client.gate.era_key = era_key
    drain.run()
