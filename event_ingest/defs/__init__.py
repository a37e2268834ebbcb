"""Dagster definitions: thin glue over event_ingest.core.

`events` is partitioned by source. Each source has a sensor that keeps it hosted by a
long-lived `ingest` run (one run hosts up to `runs.sources_per_run` sources, and hands them
to its successor without a pause); checks find gaps, stale and stuck sources. Alert sensors, the
retention job, the replay job and the rename warning live in their own modules, one factory each.
`event_ingest.defs.definitions` is the module Dagster loads (workspace.yaml); it reads the
sources file ($EVENT_INGEST_SOURCES, default ./sources.yaml) when Dagster asks for the
definitions, not at import, and takes Postgres and Redis URLs from EVENT_INGEST_DATABASE_URL
and EVENT_INGEST_REDIS_URL.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ..config import IngestConfig, SourceConfig
from .alerts import build_alerts
from .assets import build_events_asset, build_rollup_asset
from .checks import build_checks
from .ingest_job import build_ingest_job
from .renames import build_rename_warnings
from .replay import build_replay
from .resources import IngestResource, ingest_resource_from_env
from .retention import build_retention
from .sensors import build_source_sensor


def build_definitions(
    config: IngestConfig | list[SourceConfig], ingest: IngestResource | None = None, sources_file: Path | None = None
) -> dg.Definitions:
    if not isinstance(config, IngestConfig):
        config = IngestConfig(sources=list(config))
    sources = config.sources
    partitions = dg.StaticPartitionsDefinition([s.name for s in sources])
    events = build_events_asset(sources, partitions)
    rollup = build_rollup_asset(sources)
    checks = build_checks(partitions, sources)
    ingest_job = build_ingest_job(config, sources_file)
    drain_job = dg.define_asset_job(
        "drain",
        selection=dg.AssetSelection.assets(events),  # its checks come along
        description="One bounded drain of one source (a partition): to its head or its max_run_seconds, then its "
        "checks. Continuous ingestion is the `ingest` job's.",
        # One process per run, not one per step: each extra process would import Dagster again.
        executor_def=dg.in_process_executor,
    )
    rollup_job = dg.define_asset_job(
        "rollup", selection=dg.AssetSelection.assets(rollup), executor_def=dg.in_process_executor
    )
    rollup_schedule = dg.ScheduleDefinition(
        name="events_per_minute_every_10_minutes",
        job=rollup_job,
        cron_schedule="*/10 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    ingest_defs = dg.Definitions(
        assets=[events, rollup],
        asset_checks=checks,
        jobs=[ingest_job, drain_job, rollup_job],
        schedules=[rollup_schedule],
        sensors=[build_source_sensor(s, config, ingest_job) for s in sources],
        resources={"ingest": ingest or ingest_resource_from_env()},
    )
    return dg.Definitions.merge(
        ingest_defs,
        build_alerts(sources),  # run- and check-failure webhooks, one message per incident
        build_retention(),  # hourly deletion of old finished runs
        build_replay(sources),  # `event-ingest replay` from the launchpad
        build_rename_warnings(sources, ingest),  # a source that looks renamed is logged when the definitions load
    )
