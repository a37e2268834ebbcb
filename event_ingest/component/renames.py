"""Sources that come and go: a warning when a source an `ingest` run is about to host looks renamed.

A source is known by its name (cursor, events partition, lease). Renamed in the configuration, it is a
new source whose first drain starts from zero, while the old name's state is kept and nothing reads it
any more. That cannot be told apart from removing one source and adding another, so nothing is blocked;
but it is not silent: when an `ingest` run starts and a source of its slot has no state yet while a
source with state is configured nowhere in this code location, the run's log says so, naming both,
before the new source's first request - and `event-ingest status` keeps showing the pair afterwards.

This runs in the run, not when the definitions load: loading (`dg check defs`, a code server start)
touches neither Postgres nor Redis. Reading the state is one short query; if it fails the run goes on
(its own next step needs Postgres and says so if it cannot reach it).
"""

from __future__ import annotations

import logging

from ..core import Store, StoreError
from ..core.status import Rename, suspected_renames
from .resources import IngestResource

CONNECT_TIMEOUT_S = 5


def warn_of_renames(
    ingest: IngestResource, configured: set[str], members: list[str], log: logging.Logger | logging.LoggerAdapter
) -> list[Rename]:
    """Renames suspected for ``members`` (sources without state while a source with state is not among
    ``configured``); each one logged as a warning."""
    try:
        with Store(
            ingest.database_url,
            application_name="event-ingest-renames",
            connect_timeout_s=CONNECT_TIMEOUT_S,
            read_only=True,
        ) as store:
            exists, _ = store.schema_found()
            activity = store.source_activity() if exists else []
    except StoreError as exc:
        log.info(f"renamed sources not looked for: {exc}")
        return []
    renames = [
        r for r in suspected_renames(sorted(configured), activity, without_state_only=True) if r.new in set(members)
    ]
    for rename in renames:
        log.warning(f"configuration: {rename.summary()}")
    return renames
