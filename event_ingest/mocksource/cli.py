"""The mock-source command line: ``event-ingest mock-source`` and ``python -m event_ingest.mocksource``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from event_ingest.mocksource.config import MockSourceConfig
from event_ingest.mocksource.source import serve_forever


def command(name: str, port: int, **options: object) -> list[str]:
    """The command line that serves one mock source in a process of its own; ``options`` are this
    module's long options with underscores (``seed_batch=3`` is ``--seed-batch 3``)."""
    cmd = [sys.executable, "-m", "event_ingest.cli", "mock-source", "--name", name, "--port", str(port)]
    for key, value in options.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    return cmd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mock-source options (dest names match MockSourceConfig fields)."""
    parser.add_argument("--name", required=True, help="source name (in payloads and /health)")
    parser.add_argument("--port", type=int, required=True, help="TCP port, 0 = pick a free one")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--backlog", type=int, default=0, metavar="N", help="ids 1..N exist at start")
    parser.add_argument("--rate", type=float, default=0.0, metavar="R", help="live producer: R new events per second")
    parser.add_argument(
        "--seed-batch",
        type=int,
        default=None,
        metavar="K",
        help="seed mode: every response is exactly K new events after lastId",
    )
    parser.add_argument("--error-rate", type=float, default=0.0, metavar="F", help="fraction of /events answered 500")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, metavar="MS", help="delay added before every /events answer"
    )
    parser.add_argument(
        "--rate-limit-rate", type=float, default=0.0, metavar="F", help="fraction of /events answered 429"
    )
    parser.add_argument(
        "--retry-after",
        dest="retry_after_s",
        type=int,
        default=1,
        metavar="S",
        help="Retry-After seconds on 429s (default 1)",
    )
    parser.add_argument(
        "--malformed-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of /events answered 200 with truncated JSON",
    )
    parser.add_argument(
        "--random-seed", type=int, default=None, metavar="N", help="seed for fault decisions (reproducible runs)"
    )
    parser.add_argument(
        "--min-interval-ms",
        type=float,
        default=200.0,
        metavar="MS",
        help="recorder threshold for too-close requests (default 200)",
    )
    parser.add_argument(
        "--tls-cert",
        dest="tls_cert_file",
        default=None,
        metavar="PEM",
        help="serve HTTPS with this certificate (chain)",
    )
    parser.add_argument(
        "--tls-key", dest="tls_key_file", default=None, metavar="PEM", help="the certificate's private key"
    )


def config_from_args(args: argparse.Namespace) -> MockSourceConfig:
    """Build and validate a config from parsed add_arguments() options."""
    config = MockSourceConfig(
        name=args.name,
        host=args.host,
        port=args.port,
        backlog=args.backlog,
        rate=args.rate,
        seed_batch=args.seed_batch,
        error_rate=args.error_rate,
        latency_ms=args.latency_ms,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_s=args.retry_after_s,
        malformed_rate=args.malformed_rate,
        random_seed=args.random_seed,
        min_interval_ms=args.min_interval_ms,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
    )
    config.validate()
    return config


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until signalled; returns a process exit code."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"mock source: error: {exc}", file=sys.stderr)
        return 2
    try:
        serve_forever(config)
    except OSError as exc:  # typically: port already in use
        print(f"mock source {config.name}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m event_ingest.mocksource",
        description="Mock HTTP event source for tests, dev stack, benchmarks and chaos runs.",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
