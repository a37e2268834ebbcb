"""Checks case: what the asset checks and the rollup cost as one source grows to 1, 10 and 30 million events.

    event-ingest bench checks [--sizes 1000000,10000000,30000000] [--repeat 5] [--no-baseline]
                              [--dagster] [--quick] [--out DIR] [--json]

Loads one source by COPY through the events table (so its counting triggers run, as for any write),
ingest times spread over the last 40 minutes, up to each size in turn. At each size it times, as
the Dagster checks and rollup run them:

- ``no_gaps``: core.checks.gap_check on a gap-free source (the counters answer);
- ``no_gaps, one event deleted``: the same after a plain SQL DELETE of an event in the middle
  (the check must fail and name the id; the event is put back afterwards);
- ``cursor_matches_max_id``, ``quarantine_empty``: core.checks.cursor_check / quarantine_check;
- ``rollup``: the per-minute counts of the last hour the events_per_minute asset reads;
- ``status``: Store.source_status, behind `event-ingest status`.

and, unless --no-baseline, what reading every row costs at the same size (the way these ran before
the counters): every gap found by reading every id (Store.gaps), count(*) of the source, and every
ingested_at of the last hour fetched into Python (Store.recent_ingest_times).
Each figure is the median of --repeat runs (baselines: one run).

With --dagster it also times what an operator sees, through Dagster's own CLI, once with the table
empty and once at each size: ``dagster asset materialize --select events --partition SOURCE`` (a
drain that finds nothing new at a mock source, then the partition's checks) and
``dagster job execute -j rollup``. Each is a fresh process that imports Dagster, so what matters
is the growth over the empty table, not the absolute time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import report
from .services import one_row, services

if TYPE_CHECKING:
    from ..core import Store

T = TypeVar("T")

HELP = "time the checks' and the rollup's queries at 1, 10 and 30 million events in one source"
LOAD_CHUNK = 500_000  # rows per COPY statement (and transaction) while loading
SPREAD = timedelta(minutes=40)  # ingest times of the loaded rows: within the rollup's hour while the run lasts
TARGET_S = 1.0  # the checks' and rollup's queries together, per materialization
DAGSTER_TARGET_S = 2.0  # a materialization with the table full, over one with it empty

COUNT_SQL = "SELECT count(*) FROM events WHERE source = %s"
DELETE_ONE_SQL = "DELETE FROM events WHERE source = %s AND event_id = %s"
PUT_BACK_SQL = "INSERT INTO events (source, event_id, payload, ingested_at) VALUES (%s, %s, %s, %s)"
LOADED_ROW_SQL = "SELECT payload::text, ingested_at FROM events WHERE source = %s AND event_id = %s"
COPY_LOAD_SQL = "COPY events (source, event_id, payload, ingested_at) FROM STDIN"
# Where a drain that stored these events would have left the cursor.
SET_CURSOR_SQL = "UPDATE source_state SET cursor = %s WHERE source = %s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        default="1000000,10000000,30000000",
        help="events in the source at each measurement, ascending (default 1M,10M,30M)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per timed query; the median is kept (default 5)")
    parser.add_argument("--no-baseline", action="store_true", help="skip timing the full-scan queries")
    parser.add_argument("--keep", action="store_true", help="keep the loaded source (default: drop it at the end)")
    parser.add_argument(
        "--dagster",
        action="store_true",
        help="also time the partition's materialization and the rollup job through Dagster's CLI, "
        "empty and at each size",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON (last line)")
    report.add_output_arguments(parser, "CI smoke run: 20,000 and 200,000 events, 3 runs each, no target asserted")


def run(args: argparse.Namespace) -> int:
    from ..core import Store

    if args.quick:
        args.sizes, args.repeat = "20000,200000", 3
    sizes = sorted(int(s) for s in args.sizes.split(","))
    out = report.output_dir(args.out, "checks")
    source = f"bench_k{uuid.uuid4().hex[:8]}"
    rows, dagster_rows = [], []
    with contextlib.ExitStack() as stack:
        database_url, redis_url = stack.enter_context(services(redis=args.dagster))
        store = stack.enter_context(Store(database_url))
        store.apply_schema([source])
        cli = _DagsterCli(stack, source, database_url, redis_url) if args.dagster and redis_url else None
        dagster_repeat = min(args.repeat, 3)
        try:
            if cli:
                dagster_rows.append(cli.measure(0, dagster_repeat))
            loaded, started, load_s = 0, datetime.now(UTC), 0.0
            for size in sizes:
                t = time.perf_counter()
                _load(store, source, loaded, size, sizes[-1], started)
                load_s += time.perf_counter() - t
                loaded = size
                rows.append(_measure(store, source, size, args.repeat, not args.no_baseline))
                rows[-1]["load_s_so_far"] = round(load_s, 1)
                if cli:
                    dagster_rows.append(cli.measure(size, dagster_repeat))
                print(f"bench checks: {size:,} events measured", flush=True)
        finally:
            if not args.keep:
                store.forget_source(source)
    for row in rows:
        row["checks_and_rollup_s"] = round(
            sum(row[k] for k in ("no_gaps_s", "cursor_check_s", "quarantine_check_s", "rollup_s")), 4
        )
    figures = {
        "source": source if args.keep else None,
        "repeat": args.repeat,
        "target_s": TARGET_S,
        "sizes": rows,
        "dagster": dagster_rows,
    }
    columns = [
        "events",
        "no_gaps_s",
        "no_gaps_one_deleted_s",
        "cursor_check_s",
        "quarantine_check_s",
        "rollup_s",
        "checks_and_rollup_s",
        "status_s",
    ]
    report.print_table(rows, columns, title="bench checks: seconds per query (median), counters")
    if not args.no_baseline:
        report.print_table(
            rows,
            ["events", "full_gap_scan_s", "count_rows_s", "fetch_ingest_times_s", "ingest_times_fetched"],
            title="the same questions answered by reading every row (one run each)",
        )
    if dagster_rows:
        empty = dagster_rows[0]
        for row in dagster_rows:
            row["materialize_over_empty_s"] = round(row["materialize_s"] - empty["materialize_s"], 2)
            row["rollup_job_over_empty_s"] = round(row["rollup_job_s"] - empty["rollup_job_s"], 2)
        report.print_table(
            dagster_rows,
            [
                "events",
                "materialize_s",
                "materialize_over_empty_s",
                "rollup_job_s",
                "rollup_job_over_empty_s",
                "checks_passed",
            ],
            title=f"through Dagster's CLI: wall seconds of one process each (target: at most "
            f"{DAGSTER_TARGET_S:g} s over the empty table)",
        )
    report.write_json(out / "checks.json", figures)
    series = {
        name: ([r["events"] for r in rows], [r[key] for r in rows])
        for name, key in (
            ("no_gaps", "no_gaps_s"),
            ("no_gaps, one deleted", "no_gaps_one_deleted_s"),
            ("cursor check", "cursor_check_s"),
            ("rollup", "rollup_s"),
            ("checks + rollup", "checks_and_rollup_s"),
        )
    }
    if not args.no_baseline:
        series.update(
            {
                name: ([r["events"] for r in rows], [r[key] for r in rows])
                for name, key in (
                    ("full gap scan (before)", "full_gap_scan_s"),
                    ("count(*) (before)", "count_rows_s"),
                    ("fetch ingest times (before)", "fetch_ingest_times_s"),
                )
            }
        )
    report.save_chart(
        out / "checks.png",
        title="Checks and rollup: seconds per query as the source grows",
        xlabel="events in the source",
        ylabel="seconds (log scale)",
        series=series,
        logx=True,
        logy=True,
    )
    if args.json:
        print(json.dumps(figures))
    return 0


def _load(store: Store, source: str, first_loaded: int, size: int, largest: int, started: datetime) -> None:
    """Ids first_loaded+1..size, ingest times spread evenly over SPREAD before `started` by id."""
    span_us = SPREAD / timedelta(microseconds=1)
    for chunk_start in range(first_loaded + 1, size + 1, LOAD_CHUNK):
        chunk_end = min(chunk_start + LOAD_CHUNK - 1, size)
        with store.conn.transaction(), store.conn.cursor().copy(COPY_LOAD_SQL) as copy:
            batch = []
            for i in range(chunk_start, chunk_end + 1):
                at = started - SPREAD + timedelta(microseconds=span_us * i / largest)
                # Generated text holds no tab, newline or backslash: COPY's text format takes it as is.
                batch.append(
                    f'{source}\t{i}\t{{"created_at":{at.timestamp():.6f},"source":"{source}","seq":{i}}}'
                    f"\t{at.isoformat()}\n"
                )
                if len(batch) == 10_000:
                    copy.write("".join(batch))
                    batch.clear()
            copy.write("".join(batch))
    with store.conn.transaction():
        store.conn.execute(SET_CURSOR_SQL, (size, source))


def _median_s(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """The median time of ``repeat`` calls (at least one), and what the last one returned."""
    times = []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 4), result


def _measure(store: Store, source: str, size: int, repeat: int, baseline: bool) -> dict[str, Any]:
    from ..core.checks import cursor_check, gap_check, quarantine_check

    row: dict[str, Any] = {"events": size}
    row["no_gaps_s"], passing = _median_s(lambda: gap_check(store, source), repeat)
    row["cursor_check_s"], cursor = _median_s(lambda: cursor_check(store, source), repeat)
    row["quarantine_check_s"], _ = _median_s(lambda: quarantine_check(store, source), repeat)
    row["rollup_s"], minutes = _median_s(lambda: store.recent_minutes(source, hours=1), repeat)
    row["status_s"], status = _median_s(lambda: store.source_status(source), repeat)
    # What the figures stand on, from Postgres: the counters agree with the rows, the check passed.
    row["rows_counted"] = one_row(store.conn, COUNT_SQL, (source,))[0]
    store.conn.rollback()
    row.update(
        status_events=status.events if status is not None else None,
        gap_check_passed=passing.passed,
        cursor_check_passed=cursor.passed,
        rollup_minutes=len(minutes),
        rollup_events=sum(n for _, n in minutes),
    )

    middle = size // 2
    with store.conn.transaction():
        kept = one_row(store.conn, LOADED_ROW_SQL, (source, middle))
        store.conn.execute(DELETE_ONE_SQL, (source, middle))
    try:
        row["no_gaps_one_deleted_s"], failing = _median_s(lambda: gap_check(store, source), repeat)
        row["one_deleted_found"] = (
            not failing.passed and failing.missing == 1 and failing.listed == f"{middle}-{middle}"
        )
    finally:
        with store.conn.transaction():
            store.conn.execute(PUT_BACK_SQL, (source, middle, kept[0], kept[1]))
    if baseline:
        row["full_gap_scan_s"], _ = _median_s(lambda: store.gaps(source, limit=20), 1)
        row["count_rows_s"], _ = _median_s(lambda: store.conn.execute(COUNT_SQL, (source,)).fetchone(), 1)
        store.conn.rollback()
        row["fetch_ingest_times_s"], times = _median_s(lambda: store.recent_ingest_times(source, hours=1), 1)
        row["ingest_times_fetched"] = len(times)
        del times
    return row


class _DagsterCli:
    """Dagster's own CLI against the loaded source: a mock at the source's head (it serves nothing new),
    a sources file naming it, a temporary DAGSTER_HOME (local storage: the run's own bookkeeping is
    not what is measured)."""

    def __init__(self, stack: contextlib.ExitStack, source: str, database_url: str, redis_url: str) -> None:
        from ..config import DATABASE_URL_ENV, REDIS_URL_ENV, SOURCES_ENV
        from ..mocksource import MockSource, MockSourceConfig

        mock = stack.enter_context(MockSource(MockSourceConfig(name=source)))
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="event-ingest-bench-dagster-")))
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        sources = home / "sources.yaml"
        sources.write_text(f"sources:\n  - name: {source}\n    url: {mock.url}\n")
        self.source = source
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            SOURCES_ENV: str(sources),
            DATABASE_URL_ENV: database_url,
            REDIS_URL_ENV: redis_url,
        }
        self.dagster = str(Path(sys.executable).with_name("dagster"))
        # Not measured: a fresh Redis has no gate era, so the first drain waits out one request's
        # longest life (the safe answer to lost gate state); and the first run compiles what it imports.
        self._timed("asset", "materialize", "--select", "events", "--partition", source)

    def _timed(self, *args: str) -> tuple[float, str]:
        t = time.perf_counter()
        run = subprocess.run(
            [self.dagster, *args, "-m", "event_ingest.definitions"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        elapsed = time.perf_counter() - t
        if run.returncode != 0:
            raise RuntimeError(f"dagster {' '.join(args)} exited {run.returncode}:\n{run.stderr[-3000:]}")
        return round(elapsed, 2), run.stdout + run.stderr

    def measure(self, size: int, repeat: int) -> dict:
        """Median wall time of `repeat` runs of each command (this machine is noisy; a run is ~20 s)."""
        materialize, rollup, evaluations, passed = [], [], 0, 0
        for _ in range(repeat):
            seconds, log = self._timed("asset", "materialize", "--select", "events", "--partition", self.source)
            materialize.append(seconds)
            rollup.append(self._timed("job", "execute", "-j", "rollup")[0])
            # The checks ran in that run, and passed: their evaluations are in its log.
            lines = [line for line in log.splitlines() if " - ASSET_CHECK_EVALUATION - " in line]
            evaluations += len(lines)
            passed += sum(1 for line in lines if "' passed" in line)
        materialize_s, rollup_s = statistics.median(materialize), statistics.median(rollup)
        print(
            f"bench checks: through Dagster at {size:,} events: materialize {materialize} s, rollup job {rollup} s",
            flush=True,
        )
        return {
            "events": size,
            "materialize_s": materialize_s,
            "rollup_job_s": rollup_s,
            "materialize_runs_s": materialize,
            "checks_passed": f"{passed}/{evaluations}",
        }
