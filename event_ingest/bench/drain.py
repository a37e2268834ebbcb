"""Drain case: how close does one drain get to the 5 requests/s that 200 ms spacing allows?

    event-ingest bench [drain] [--seconds 60] [--page-size 1000] [--latency-ms 0] [--json] [--quick]

Starts a mock source with a backlog deeper than the run can drain, drains it for ``--seconds``
with the real drain (real Postgres, real Redis, real HTTP), then takes every figure from where
it happened: requests, their rate and spacing from the source's own recorder (arrivals stamped
at the source, the rate over its first-to-last arrival span), events from Postgres' rows. The drain's
own report gives only how it ended.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import TYPE_CHECKING

from ..config import SourceConfig
from . import report
from .services import one_row, services

if TYPE_CHECKING:
    from ..core import Store

HELP = "drain a deep backlog and report rate and spacing at the source"
COUNT_ROWS_SQL = "SELECT count(*) FROM events WHERE source = %s"
QUICK = {"seconds": 3.0, "page_size": 100, "target": 0.0}  # a smoke run: spacing still judged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the drain (default 60)")
    parser.add_argument("--page-size", type=int, default=1000, help="events per page (default 1000)")
    parser.add_argument("--interval-ms", type=int, default=200, help="min_interval_ms of the source (default 200)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added source latency (default 0)")
    parser.add_argument("--target", type=float, default=0.95, help="fraction of the max rate to reach (default 0.95)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (last line)")
    report.add_output_arguments(parser, "CI smoke run: 3 s, pages of 100, no target asserted")


def _rows(store: Store, source: str) -> int:
    """Events of the source counted in its rows (not the drain's report, nor a counter kept beside the rows)."""
    (count,) = one_row(store.conn, COUNT_ROWS_SQL, (source,))
    store.conn.rollback()
    return int(count)


def run(args: argparse.Namespace) -> int:
    from ..core import DrainOptions, Store, connect_redis, drain
    from ..mocksource import MockSource, MockSourceConfig

    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    out = report.output_dir(args.out, "drain")
    max_rate = 1000.0 / args.interval_ms
    # Deeper than the run can possibly drain, so it never catches up.
    backlog = int(args.page_size * max_rate * args.seconds * 1.5) + args.page_size
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with (
        services() as (database_url, redis_url),
        MockSource(
            MockSourceConfig(name=name, backlog=backlog, latency_ms=args.latency_ms, min_interval_ms=args.interval_ms)
        ) as mock,
    ):
        source = SourceConfig(
            name=name,
            url=mock.url,
            page_size=args.page_size,
            min_interval_ms=args.interval_ms,
            max_run_seconds=args.seconds,
        )
        with Store(database_url) as store:
            store.apply_schema([name])
            # Warm-up: the first grant on a new source waits out one hold (the gate's cold start).
            drain(source, store=store, redis_client=connect_redis(redis_url), options=DrainOptions(max_seconds=1))
            stored_before = _rows(store, name)
            mock.reset_stats()
            stats = drain(
                source,
                store=store,
                redis_client=connect_redis(redis_url),
                options=DrainOptions(max_seconds=args.seconds),
            )
            stored = _rows(store, name) - stored_before
        seen = mock.stats()
    span_s = seen["arrival_span_s"] or 0.0
    # n requests make n - 1 intervals over the span from the first arrival to the last.
    rate = (seen["requests"] - 1) / span_s if span_s else 0.0
    result = {
        "arrival_span_s": round(span_s, 3),
        "requests": seen["requests"],
        "requests_per_s": round(rate, 3),
        "max_rate_per_s": max_rate,
        "fraction_of_max": round(rate / max_rate, 4),
        "min_gap_ms_at_source": seen["min_gap_ms"],
        "median_gap_ms_at_source": seen["median_gap_ms"],
        "gaps_under_interval": seen["gaps_under_200ms"],
        "events_stored": stored,  # rows in Postgres
        "events_per_s": round(stored / span_s, 1) if span_s else 0.0,
        "page_size": args.page_size,
        "drain_seconds": args.seconds,
        "drain_status": stats.status,
    }
    passed = result["fraction_of_max"] >= args.target and result["gaps_under_interval"] == 0
    result["passed"] = passed
    report.write_json(out / "drain.json", result)
    report.print_table(
        [
            {"figure": "requests at the source", "value": result["requests"]},
            {"figure": "first to last arrival, s", "value": result["arrival_span_s"]},
            {"figure": "requests/s at the source", "value": result["requests_per_s"]},
            {"figure": f"fraction of {max_rate:g}/s", "value": result["fraction_of_max"]},
            {"figure": "min gap at the source, ms", "value": result["min_gap_ms_at_source"]},
            {"figure": "median gap at the source, ms", "value": result["median_gap_ms_at_source"]},
            {"figure": f"gaps under {args.interval_ms} ms", "value": result["gaps_under_interval"]},
            {"figure": "events stored (Postgres)", "value": result["events_stored"]},
            {"figure": "events/s over the span", "value": result["events_per_s"]},
        ],
        ["figure", "value"],
        title=f"bench drain: {args.seconds:g} s, pages of {args.page_size}",
    )
    print("PASS" if passed else f"FAIL (target {args.target} of max rate, no gap under the interval)")
    if args.json:
        print(json.dumps(result))
    return 0 if passed else 1
