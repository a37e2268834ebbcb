"""Dagster definitions: thin glue over event_ingest.core.

`events` is partitioned by source; each source has a sensor that keeps a run
draining it; checks find gaps. Alert sensors and the retention job live in
their own modules, one factory each. `event_ingest.defs.definitions` is the module
Dagster loads (workspace.yaml): it reads the sources file
($EVENT_INGEST_SOURCES, default ./sources.yaml) and takes Postgres and Redis
URLs from EVENT_INGEST_DATABASE_URL and EVENT_INGEST_REDIS_URL.
"""

from __future__ import annotations

import dagster as dg

from ..config import SourceConfig
from .alerts import build_alerts
from .assets import build_events_asset, build_rollup_asset
from .checks import build_checks
from .resources import IngestResource, ingest_resource_from_env
from .retention import build_retention
from .sensors import build_source_sensor


def build_definitions(sources: list[SourceConfig], ingest: IngestResource | None = None) -> dg.Definitions:
    partitions = dg.StaticPartitionsDefinition([s.name for s in sources])
    events = build_events_asset(sources, partitions)
    rollup = build_rollup_asset(partitions)
    checks = build_checks(partitions)
    ingest_job = dg.define_asset_job(
        "ingest",
        selection=dg.AssetSelection.assets(events, rollup),  # checks on these assets come along
        description="Drain one source (one partition), run its checks, refresh its per-minute rollup.",
        # One process per run, not one per step: the steps are short and sequential, and each extra
        # process would import Dagster again (seconds on a small machine, every few seconds per source).
        executor_def=dg.in_process_executor,
    )
    ingest_defs = dg.Definitions(
        assets=[events, rollup],
        asset_checks=checks,
        jobs=[ingest_job],
        sensors=[build_source_sensor(s.name, ingest_job) for s in sources],
        resources={"ingest": ingest or ingest_resource_from_env()},
    )
    return dg.Definitions.merge(
        ingest_defs,
        build_alerts(sources),  # run- and check-failure webhooks, one message per incident
        build_retention(),  # hourly deletion of old finished runs
    )

