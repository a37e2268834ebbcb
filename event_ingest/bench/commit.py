"""Commit case: the fenced per-page commit next to a plain COPY of the same rows, in one run.

    event-ingest bench commit [--events 200000] [--page-sizes 1000,100] [--quick] [--out DIR] [--json]

For each page size the same pages (built by the real page parser from bodies shaped like the mock
source's) go, page by page and in rotating order, three ways, each page its own transaction:

- ``commit_page``: Store.commit_page into one source - the fence, the events and the cursor together;
- ``copy_events``: a plain COPY into another source's partition of the same ``events`` table
  (its counting triggers included, as they are part of the table);
- ``copy_plain``: a plain COPY into a table of the same shape without triggers (what COPY costs bare).

Then the first pages are committed again after rewinding the cursor (a replay: every id already
stored, the ON CONFLICT path). Rows are counted in Postgres afterwards; events/s is rows over the
summed time of each way's transactions. Ratio = commit_page / copy_events (the brief's target >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import TYPE_CHECKING

from . import report
from .services import one_row, services

if TYPE_CHECKING:
    from psycopg import sql

    from ..core import Store

HELP = "time the fenced commit of a page against a plain COPY of the same rows"
PATHS = ("commit_page", "copy_events", "copy_plain")
REPLAY_PAGES = 20

PLAIN_TABLE_SQL = """
CREATE TABLE {table} (
    source       text        NOT NULL,
    event_id     bigint      NOT NULL,
    payload      jsonb,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
)
"""
COPY_SQL = "COPY {table} (source, event_id, payload) FROM STDIN"
COUNT_ROWS_SQL = "SELECT count(*) FROM {table} WHERE source = %s"
# What a replay will do through the fence: a new epoch and the cursor set back over stored events.
REWIND_SQL = "UPDATE source_state SET cursor = 0 WHERE source = %s"
SETTINGS_SQL = (
    "SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit')"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="events per page size and way (default 200000)")
    parser.add_argument("--page-sizes", default="1000,100", help="comma-separated page sizes (default 1000,100)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON (last line)")
    report.add_output_arguments(parser, "CI smoke run: 5000 events per page size, no target asserted")


def pages_like_the_mock(source: str, events: int, page_size: int) -> list:
    """Pages as the drain would have them: mock-shaped bodies through the real parser."""
    from ..core.page import parse_page

    pages, now = [], time.time()
    for first in range(1, events + 1, page_size):
        ids = range(first, min(first + page_size, events + 1))
        body = json.dumps(
            {"events": [{"id": i, "payload": {"created_at": now, "source": source, "seq": i}} for i in ids]}
        ).encode()
        pages.append(parse_page(body, cursor=first - 1, max_payload_bytes=1 << 20).events)
    return pages


def run(args: argparse.Namespace) -> int:
    from psycopg import sql

    from ..core import Store

    if args.quick:
        args.events = 5000
    page_sizes = [int(p) for p in args.page_sizes.split(",")]
    out = report.output_dir(args.out, "commit")
    tag = uuid.uuid4().hex[:8]
    runs, ratios = [], {}
    with services(redis=False, fast_postgres=False) as (database_url, _), Store(database_url) as store:
        conn = store.conn
        version, fsync, synchronous_commit = one_row(conn, SETTINGS_SQL)
        conn.rollback()
        for page_size in page_sizes:
            commit_source, copy_source = f"bench_c{tag}_{page_size}", f"bench_p{tag}_{page_size}"
            plain = sql.Identifier(f"bench_plain_{tag}_{page_size}")
            store.apply_schema([commit_source, copy_source])
            with conn.transaction():
                conn.execute(sql.SQL(PLAIN_TABLE_SQL).format(table=plain))
            try:
                runs += _time_page_size(store, page_size, args.events, commit_source, copy_source, plain)
            finally:
                with conn.transaction():
                    conn.execute(sql.SQL("DROP TABLE {}").format(plain))
                store.forget_source(commit_source)
                store.forget_source(copy_source)
            by_path = {r["path"]: r for r in runs if r["page_size"] == page_size}
            ratios[page_size] = {
                "commit_vs_copy_events": round(
                    by_path["commit_page"]["events_per_s"] / by_path["copy_events"]["events_per_s"], 3
                ),
                "commit_vs_copy_plain": round(
                    by_path["commit_page"]["events_per_s"] / by_path["copy_plain"]["events_per_s"], 3
                ),
            }
    figures = {
        "postgres": {"version": version, "fsync": fsync, "synchronous_commit": synchronous_commit},
        "events_per_page_size": args.events,
        "runs": runs,
        "ratios": {str(k): v for k, v in ratios.items()},
        "targets": {"commit_vs_copy_events": 0.5, "commit_events_per_s_pages_of_1000": 100_000},
    }
    report.print_table(
        runs,
        ["page_size", "path", "pages", "rows_in_postgres", "seconds", "events_per_s", "p50_page_ms", "p99_page_ms"],
        title=f"bench commit: Postgres {version}, fsync {fsync}, synchronous_commit {synchronous_commit}",
    )
    report.print_table(
        [{"page_size": k, **v} for k, v in ratios.items()],
        ["page_size", "commit_vs_copy_events", "commit_vs_copy_plain"],
    )
    report.write_json(out / "commit.json", figures)
    report.save_chart(
        out / "commit.png",
        title="Fenced commit vs plain COPY of the same rows (one run)",
        ylabel="events/s",
        xlabel="page size",
        series={
            path: (
                [str(r["page_size"]) for r in runs if r["path"] == path],
                [r["events_per_s"] for r in runs if r["path"] == path],
            )
            for path in (*PATHS, "commit_page_replay")
        },
        kind="bar",
    )
    if args.json:
        print(json.dumps(figures))
    return 0


def _time_page_size(
    store: Store, page_size: int, events: int, commit_source: str, copy_source: str, plain: sql.Identifier
) -> list[dict]:
    from psycopg import sql

    conn = store.conn
    pages = pages_like_the_mock(commit_source, events, page_size)
    copy_events = sql.SQL(COPY_SQL).format(table=sql.Identifier("events"))
    copy_plain = sql.SQL(COPY_SQL).format(table=plain)
    epoch, cursor = store.begin_epoch(commit_source)
    timings: dict[str, list[float]] = {path: [] for path in PATHS}

    def commit(page):
        nonlocal cursor
        store.commit_page(commit_source, epoch=epoch, old_cursor=cursor, new_cursor=page[-1].id, events=page)
        cursor = page[-1].id

    def copy(statement, source, page):
        with conn.transaction(), conn.cursor().copy(statement) as writer:
            for event in page:
                writer.write_row((source, event.id, event.payload_json))

    ways = {
        "commit_page": commit,
        "copy_events": lambda page: copy(copy_events, copy_source, page),
        "copy_plain": lambda page: copy(copy_plain, copy_source, page),
    }
    for n, page in enumerate(pages):
        # Rotate who goes first, so no way always meets a cache the previous one warmed.
        for path in PATHS[n % 3 :] + PATHS[: n % 3]:
            started = time.perf_counter()
            ways[path](page)
            timings[path].append(time.perf_counter() - started)

    # The replay: a new epoch, the cursor back to 0, the first pages again - every id already stored.
    with conn.transaction():
        conn.execute(REWIND_SQL, (commit_source,))
    epoch, cursor = store.begin_epoch(commit_source)
    replayed = pages[:REPLAY_PAGES]
    timings["commit_page_replay"] = []
    for page in replayed:
        started = time.perf_counter()
        commit(page)
        timings["commit_page_replay"].append(time.perf_counter() - started)

    rows = {}
    for path, table, source in (
        ("commit_page", "events", commit_source),
        ("copy_events", "events", copy_source),
        ("copy_plain", plain, copy_source),
    ):
        table = sql.Identifier(table) if isinstance(table, str) else table
        rows[path] = one_row(conn, sql.SQL(COUNT_ROWS_SQL).format(table=table), (source,))[0]
        conn.rollback()
    rows["commit_page_replay"] = rows["commit_page"]  # nothing new: the same rows, counted once
    result = []
    for path, spent in timings.items():
        done = sum(len(p) for p in (replayed if path == "commit_page_replay" else pages))
        ordered = sorted(spent)
        result.append(
            {
                "page_size": page_size,
                "path": path,
                "pages": len(spent),
                "events": done,
                "rows_in_postgres": rows[path],
                "seconds": round(sum(spent), 4),
                "events_per_s": round(done / sum(spent), 1),
                "p50_page_ms": round(ordered[len(ordered) // 2] * 1000, 3),
                "p99_page_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
            }
        )
    return result
