"""The product's commands. Each returns its exit code when the work ran, and raises when it could not:
``main`` maps what was raised (a ConfigError, a refusal, a store error...) to an exit code and one line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from typing import TYPE_CHECKING

from ..config import (
    REDIS_URL_ENV,
    ConfigError,
    Settings,
    database_url,
    load_config,
    load_sources,
    redact_url,
    sources_schema,
)
from ..exits import EXIT_FAILED, EXIT_OK
from .errors import CliError
from .rendering import print_status, stated_fields
from .services import open_reader, open_services, open_store, settings_from_env

if TYPE_CHECKING:
    import redis


def cmd_ingest(args: argparse.Namespace) -> int:
    from ..core import DrainOptions, drain

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
    from ..core import RedisUnavailable, connect_redis
    from ..core.status import read_status

    if args.check:
        return status_check(args)
    configured: list[str] | None
    try:
        configured, file_problem = [s.name for s in load_sources(args.sources)], None
    except ConfigError as exc:
        configured, file_problem = None, str(exc)
    store = open_reader(database_url())
    redis_client: redis.Redis | None = None
    redis_problem: str | None = None
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
    finally:
        if redis_client is not None:
            redis_client.close()
    if file_problem:
        report.notes.insert(0, f"sources file not read ({file_problem})")
    print_status(report, as_json=args.json)
    return EXIT_OK


def status_check(args: argparse.Namespace) -> int:
    """For cron, a Kubernetes probe or a monitor: one line per configured source past its max_lag_s (or never
    polled) and exit 1; nothing and exit 0 when every one is fresh. Needs the sources file (which sources,
    their max_lag_s) and Postgres alone, so it tells the truth when nothing else runs."""
    from ..core.status import late_sources

    sources = load_sources(args.sources)  # a ConfigError is one line and exit 2: nothing can be judged
    with open_reader(database_url()) as store:
        late = late_sources(store.status(), sources)
    for source in late:
        print(source.summary(), flush=True)
    return EXIT_FAILED if late else EXIT_OK


def cmd_recount(args: argparse.Namespace) -> int:
    with open_store(database_url()) as store:
        if store.source_status(args.source) is None:
            raise CliError(f"event-ingest: refused: source {args.source!r} has no state; nothing done")
        result = store.recount(args.source)
    print(json.dumps(result.to_dict()) if args.json else result.summary(), flush=True)
    return EXIT_OK


def cmd_skip(args: argparse.Namespace) -> int:
    from ..core.skip import skip_page

    settings = settings_from_env(args.sources)
    source = settings.source(args.source)
    store, redis_client = open_services(settings)
    with store:
        result = skip_page(
            source, store=store, redis_client=redis_client, to_id=args.to_id, lease_wait_s=args.lease_wait
        )
    print(json.dumps(result.__dict__) if args.json else result.summary(), flush=True)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from ..core.replay import check_request, replay

    settings = Settings(database_url=database_url(), redis_url="", sources=load_sources(args.sources))
    settings.source(args.source)  # configured, or one line naming the configured ones
    check_request(args.source, args.from_id, args.delete_from)
    with open_store(settings.database_url) as store:
        result = replay(store, args.source, from_id=args.from_id, delete_from=args.delete_from)
    print(json.dumps(result.to_dict()) if args.json else result.summary(), flush=True)
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


# The tooling commands: their modules are imported only when chosen (parsing.LAZY_COMMANDS).


def cmd_mock_source(args: argparse.Namespace) -> int:
    from ..mocksource.cli import run_from_args

    return run_from_args(args)


def cmd_dev(args: argparse.Namespace) -> int:
    from ..devstack.dev import run_dev

    return run_dev(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    return run_bench(args)


def cmd_chaos(args: argparse.Namespace) -> int:
    from ..chaos import run_chaos

    return run_chaos(args)
