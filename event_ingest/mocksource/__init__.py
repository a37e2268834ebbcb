"""Mock HTTP event source used by tests, the dev stack, benchmarks and chaos runs."""

from event_ingest.mocksource.server import (
    ONESHOT_KINDS,
    MockSource,
    MockSourceConfig,
    add_arguments,
    config_from_args,
    main,
    run_from_args,
    serve_forever,
)

__all__ = [
    "ONESHOT_KINDS",
    "MockSource",
    "MockSourceConfig",
    "add_arguments",
    "config_from_args",
    "main",
    "run_from_args",
    "serve_forever",
]
