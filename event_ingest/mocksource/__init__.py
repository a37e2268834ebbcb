"""Mock event source: an HTTP server that speaks the event-source protocol.

Protocol served (same as every real source)::

    GET /events?lastId=N&limit=M  ->  200 {"events": [{"id": int, "payload": ...}, ...]}

events with id > N in ascending order, at most M; missing lastId means 0 and an
empty list means "nothing new".

Besides serving events, the mock is the *judge* of the project's politeness
rule (no source may get two requests less than ``min_interval_ms`` apart,
start to start): every /events request's arrival is stamped with
``time.monotonic()`` before anything else happens and ``GET /stats`` reports the
gaps. It also records which event ids were really served so a chaos harness can
compare them with what ended up stored, and the lastId each request asked for
(``last_ids`` in ``GET /stats?ids=1``), so a test sees where a consumer reads from.

Faults (random errors, 429s, malformed bodies, latency) come from the config
and can be changed on a running server with ``POST /control``; ``POST /control
{"next": [...]}`` queues exact one-shot responses (see ``ONESHOT_KINDS``).

With ``tls_cert_file``/``tls_key_file`` it serves HTTPS, and ``/stats`` shows
the headers of the latest /events request (``last_request_headers``), so a test
can see on the source's side what a client sent.

Stdlib only, so it can run anywhere the tests, dev stack or benchmarks do.
"""

from event_ingest.mocksource.cli import (
    add_arguments,
    config_from_args,
    main,
    run_from_args,
)
from event_ingest.mocksource.config import MockSourceConfig
from event_ingest.mocksource.oneshots import ONESHOT_KINDS
from event_ingest.mocksource.source import MockSource, serve_forever

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
