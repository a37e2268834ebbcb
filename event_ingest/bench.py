"""Benchmark: how close does one drain get to the 5 requests/s that 200 ms spacing allows?

    event-ingest bench [--seconds 60] [--page-size 1000] [--latency-ms 0] [--json]

Starts a mock source with a backlog deeper than the run can drain, drains it
for ``--seconds`` with the real drain (real Postgres, real Redis, real HTTP),
then reads the source's own recorder: requests per second as a fraction of
1000/min_interval_ms, and the minimum gap between requests *at the source*.
Postgres and Redis come from EVENT_INGEST_DATABASE_URL / EVENT_INGEST_REDIS_URL,
or embedded servers are started in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import uuid
from pathlib import Path

from .config import DATABASE_URL_ENV, REDIS_URL_ENV, SourceConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the drain (default 60)")
    parser.add_argument("--page-size", type=int, default=1000, help="events per page (default 1000)")
    parser.add_argument("--interval-ms", type=int, default=200, help="min_interval_ms of the source (default 200)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added source latency (default 0)")
    parser.add_argument("--target", type=float, default=0.95, help="fraction of the max rate to reach (default 0.95)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


@contextlib.contextmanager
def _services():
    """(database_url, redis_url): from the environment, else embedded servers in a temp dir."""
    db, rd = os.environ.get(DATABASE_URL_ENV), os.environ.get(REDIS_URL_ENV)
    with contextlib.ExitStack() as stack:
        if not db or not rd:
            from .devstack.embedded import EmbeddedPostgres, EmbeddedRedis

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="event-ingest-bench-")))
            if not db:
                pg = EmbeddedPostgres(tmp / "postgres", fast=True)
                db = pg.start()
                stack.callback(pg.stop)
            if not rd:
                rs = EmbeddedRedis(tmp / "redis")
                rd = rs.start()
                stack.callback(rs.stop)
        yield db, rd


def run_bench(args: argparse.Namespace) -> int:
    from .core import DrainOptions, Store, connect_redis, drain
    from .mocksource import MockSource, MockSourceConfig

    max_rate = 1000.0 / args.interval_ms
    # Deeper than the run can possibly drain, so it never catches up.
    backlog = int(args.page_size * max_rate * args.seconds * 1.5) + args.page_size
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with _services() as (database_url, redis_url), MockSource(
        MockSourceConfig(name=name, backlog=backlog, latency_ms=args.latency_ms, min_interval_ms=args.interval_ms)
    ) as mock:
        source = SourceConfig(name=name, url=mock.url, page_size=args.page_size, min_interval_ms=args.interval_ms,
                              max_run_seconds=args.seconds)
        with Store(database_url) as store:
            store.apply_schema([name])
            # Warm-up: the first grant on a new source waits out one hold (the gate's cold start).
            drain(source, store=store, redis_client=connect_redis(redis_url), options=DrainOptions(max_seconds=1))
            mock.reset_stats()
            stats = drain(source, store=store, redis_client=connect_redis(redis_url),
                          options=DrainOptions(max_seconds=args.seconds))
        seen = mock.stats()
    span_s = stats.duration_s
    rate = seen["requests"] / span_s if span_s else 0.0
    result = {
        "seconds": span_s,
        "requests": seen["requests"],
        "requests_per_s": round(rate, 3),
        "max_rate_per_s": max_rate,
        "fraction_of_max": round(rate / max_rate, 4),
        "min_gap_ms_at_source": seen["min_gap_ms"],
        "median_gap_ms_at_source": seen["median_gap_ms"],
        "gaps_under_interval": seen["gaps_under_200ms"],
        "events_stored": stats.events_stored,
        "events_per_s": round(stats.events_stored / span_s, 1) if span_s else 0.0,
        "page_size": args.page_size,
        "drain_status": stats.status,
    }
    passed = result["fraction_of_max"] >= args.target and result["gaps_under_interval"] == 0
    result["passed"] = passed
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['requests']} requests in {span_s:.1f}s = {rate:.3f}/s, "
              f"{result['fraction_of_max']:.3f} of the {max_rate:g}/s that {args.interval_ms} ms spacing allows")
        print(f"at the source: min gap {seen['min_gap_ms']} ms, median {seen['median_gap_ms']} ms, "
              f"{seen['gaps_under_200ms']} gaps under {args.interval_ms} ms")
        print(f"{stats.events_stored} events stored ({result['events_per_s']}/s), page size {args.page_size}")
        print("PASS" if passed else f"FAIL (target {args.target} of max rate, no gap under the interval)")
    return 0 if passed else 1
