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

from .server import __all__  # noqa: E402,F401  (one list of the public names, kept in server.py)
