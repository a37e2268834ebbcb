"""The ``event-ingest`` command.

    event-ingest dev                      the whole system locally (embedded Postgres/Redis, mock sources, Dagster)
    event-ingest ingest SOURCE            one drain, the same code the Dagster asset runs
    event-ingest status                   cursor, events, gaps, quarantine per source
    event-ingest skip SOURCE --to-id N    move a source stuck on a page it cannot read past it (fenced)
    event-ingest config check [FILE]      validate a sources file, one line per source
    event-ingest config schema            the JSON schema of the sources file (sources.schema.json)
    event-ingest --version                the installed version
    event-ingest mock-source ...          a mock event source on 127.0.0.1
    event-ingest bench [CASE] ...         benchmarks: drain rate and spacing, commit vs COPY, checks at scale
    event-ingest chaos ...                the fault-injection harness

Exit codes: 0 success; 1 the work ended badly (a source error, a fenced drain,
lost events, a skip that could not be done now); 2 bad configuration, a refused
request or unreachable Postgres/Redis.
"""

from __future__ import annotations

import argparse
import importlib
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
    from .core import RedisUnavailable, Store, StoreError, connect_redis

    try:
        redis_client = connect_redis(settings.redis_url)
    except RedisUnavailable as exc:
        raise CliError(f"event-ingest: {exc}") from None
    try:
        store = Store(settings.database_url)
        store.apply_schema(s.name for s in settings.sources)
    except StoreError as exc:
        raise CliError(f"event-ingest: {exc}") from None
    return store, redis_client


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
            source, store=store, redis_client=redis_client,
            options=DrainOptions(max_seconds=args.max_seconds, lease_ttl_s=args.lease_ttl,
                                 lease_wait_s=args.lease_wait),
            should_stop=stop.is_set,
        )
    print(json.dumps(stats.to_dict(), default=str) if args.json else stats.summary(), flush=True)
    return EXIT_OK if stats.ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from .core.checks import gap_check

    settings = settings_from_env(args.sources)
    store, _ = open_services(settings)
    with store:
        rows = []
        for s in store.status():
            # Every missing id counted (from the counters), none read: the total, not a first page of ranges.
            gaps = gap_check(store, s.source, scan_blocks=0)
            rows.append({
                "source": s.source, "cursor": s.cursor, "events": s.events,
                "gaps": gaps.missing, "quarantined": s.quarantined, "epoch": s.epoch,
                "fenced": s.fenced_commits,
                "last_ingest": s.last_ingest_at.isoformat(timespec="seconds") if s.last_ingest_at else "-",
            })
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    if not rows:
        print("no sources ingested yet")
        return EXIT_OK
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    print("  ".join(h.ljust(widths[h]) for h in headers))
    for r in rows:
        print("  ".join(str(r[h]).ljust(widths[h]) for h in headers))
    return EXIT_OK


def cmd_skip(args: argparse.Namespace) -> int:
    from .core import StoreError
    from .core.skip import SkipFailed, SkipRefused, skip_page

    settings = settings_from_env(args.sources)
    source = settings.source(args.source)
    store, redis_client = open_services(settings)
    with store:
        try:
            result = skip_page(source, store=store, redis_client=redis_client, to_id=args.to_id,
                               lease_wait_s=args.lease_wait)
        except SkipRefused as exc:
            raise CliError(f"event-ingest: refused: {exc}", EXIT_CONFIG) from None
        except (SkipFailed, StoreError) as exc:
            raise CliError(f"event-ingest: skip failed: {exc}", EXIT_FAILED) from None
    print(json.dumps(result.__dict__) if args.json else result.summary(), flush=True)
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
    return [f"{name}={json.dumps(shown[name])}" for name in type(settings).model_fields
            if name in settings.model_fields_set and name not in skip]


def cmd_mock_source(args: argparse.Namespace) -> int:
    from .mocksource.server import run_from_args

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


LAZY_COMMANDS = {
    "mock-source": ("event_ingest.mocksource.server", "serve a mock event source on 127.0.0.1", cmd_mock_source),
    "dev": ("event_ingest.devstack.dev", "run everything locally: Postgres, Redis, mock sources, Dagster UI",
            cmd_dev),
    "bench": ("event_ingest.bench", "benchmarks: drain (default), commit, checks", cmd_bench),
    "chaos": ("event_ingest.chaos", "fault-injection run: proves nothing lost, duplicated or too early",
              cmd_chaos),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="event-ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"event-ingest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="drain one source now (the same drain the Dagster asset runs)")
    p.add_argument("source", help="source name from the sources file")
    p.add_argument("--max-seconds", type=float, default=None, help="time budget (default: the source's max_run_seconds)")
    p.add_argument("--lease-ttl", type=float, default=LEASE_TTL_S,
                   help=f"lease TTL in seconds (default {LEASE_TTL_S:g})")
    p.add_argument("--lease-wait", type=float, default=LEASE_WAIT_S,
                   help=f"wait this long for a busy lease (default {LEASE_WAIT_S:g})")
    p.add_argument("--sources", help=SOURCES_HELP)
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("skip", help="move a source stuck on a page it cannot read past it: the page is kept in "
                       "quarantine and the cursor moves to N in one fenced commit")
    p.add_argument("source", help="source name from the sources file")
    p.add_argument("--to-id", type=int, required=True, metavar="N",
                   help="new cursor: the next request asks for ids above N (must be above the cursor)")
    p.add_argument("--lease-wait", type=float, default=LEASE_WAIT_S,
                   help=f"wait this long for a busy lease (default {LEASE_WAIT_S:g})")
    p.add_argument("--sources", help=SOURCES_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_skip)

    p = sub.add_parser("status", help="cursor, events, gaps and quarantine per source")
    p.add_argument("--sources", help=SOURCES_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    # `config`: the sources file alone; needs neither Postgres nor Redis.
    p = sub.add_parser("config", help="the sources file: check one, or print its JSON schema")
    actions = p.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    q = actions.add_parser("check", help="validate a sources file: one line per source; exit 2 and one line "
                           "naming file, source and field if it is bad")
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
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
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
