"""Sources that come and go: a warning when the definitions load and a source looks renamed.

A source is known by its name (cursor, events partition, lease). Renamed in the sources file, it is a new
source whose first drain starts from zero, while the old name's state is kept and nothing reads it any more.
That cannot be told apart from removing one source and adding another, so nothing is blocked; but it is
not silent: when the code location loads (or reloads) and a configured source has no state yet while a
source with state is no longer configured, the code location's log says so, naming both, before the new
source's sensor starts it - and `event-ingest status` keeps showing the pair afterwards.

Reading the state is one short query; if Postgres cannot be reached the definitions load all the same.
"""

from __future__ import annotations

import logging
import os

import dagster as dg

from ..config import DATABASE_URL_ENV, SourceConfig
from ..core import Store, StoreError
from ..core.status import Rename, suspected_renames
from .resources import IngestResource

log = logging.getLogger("event_ingest.defs")

CONNECT_TIMEOUT_S = 2  # a slow or absent Postgres must not hold up loading the code location for long


def _database_url(ingest: IngestResource | None) -> str | None:
    url = ingest.database_url if ingest is not None else None
    if url is None or isinstance(url, dg.EnvVar):
        url = os.environ.get(DATABASE_URL_ENV)
    return url or None


def rename_warnings(sources: list[SourceConfig], ingest: IngestResource | None = None) -> list[Rename]:
    """Configured sources without state while sources with state are not configured; each one logged."""
    url = _database_url(ingest)
    if url is None:
        return []
    try:
        with Store(
            url, application_name="event-ingest-definitions", connect_timeout_s=CONNECT_TIMEOUT_S, read_only=True
        ) as store:
            exists, _ = store.schema_found()
            activity = store.source_activity() if exists else []
    except StoreError as exc:
        log.info("renamed sources not looked for: %s", exc)
        return []
    renames = suspected_renames([s.name for s in sources], activity, without_state_only=True)
    for rename in renames:
        log.warning("sources file: %s", rename.summary())
    return renames


def build_rename_warnings(sources: list[SourceConfig], ingest: IngestResource | None = None) -> dg.Definitions:
    rename_warnings(sources, ingest)
    return dg.Definitions()
