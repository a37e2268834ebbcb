"""One instance's definitions, from a validated configuration: the whole Dagster layer in one factory.

`events` is partitioned by source. Each source has a sensor that keeps it hosted by a long-lived
`ingest` run (one run hosts up to `runs.sources_per_run` sources, and hands them to its successor
without a pause); checks find gaps, stale and stuck sources. Alert sensors, the retention job and the
replay job live in their own modules, one factory each. Every name comes from :class:`Names`, so
several instances can share a code location.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from ..config import IngestConfig, SourceConfig
from .alerts import build_alerts
from .assets import build_events_asset, build_rollup_asset
from .checks import build_checks
from .freshness import build_freshness_watch
from .ingest_job import build_ingest_job
from .names import Names
from .replay import build_replay
from .resources import IngestResource, default_resource
from .retention import build_retention
from .sensors import build_source_sensor

_DEFAULT_NAMES = Names()


def build_definitions(
    config: IngestConfig | list[SourceConfig],
    ingest: IngestResource | None = None,
    *,
    names: Names = _DEFAULT_NAMES,
    provide_resource: bool = True,
    run_retention: bool = False,
    alerts: bool = True,
    configured: Callable[[], set[str]] | None = None,
) -> dg.Definitions:
    """``ingest``: the resource to bind under ``names.resource_key`` (default: URLs from the environment);
    ``provide_resource=False`` binds none (the project provides it). ``configured``: every source name of
    the code location, for the rename warning (default: this instance's)."""
    if not isinstance(config, IngestConfig):
        config = IngestConfig(sources=list(config))
    sources = config.sources
    partitions = dg.StaticPartitionsDefinition([s.name for s in sources])
    events = build_events_asset(sources, partitions, names)
    rollup = build_rollup_asset(sources, names)
    checks = build_checks(partitions, sources, names)
    ingest_job = build_ingest_job(config, names, configured)
    drain_job = dg.define_asset_job(
        names.of("drain"),
        selection=dg.AssetSelection.assets(events),  # its checks come along
        description="One bounded drain of one source (a partition): to its head or its max_run_seconds, then its "
        f"checks. Continuous ingestion is the `{ingest_job.name}` job's.",
        # One process per run, not one per step: each extra process would import Dagster again.
        executor_def=dg.in_process_executor,
    )
    rollup_job = dg.define_asset_job(
        names.of("rollup"),
        selection=dg.AssetSelection.assets(rollup),
        description="The per-minute rollup of every source's events over the last hour (one small run).",
        executor_def=dg.in_process_executor,
    )
    rollup_schedule = dg.ScheduleDefinition(
        name=names.of("events_per_minute_every_10_minutes"),
        job=rollup_job,
        cron_schedule="*/10 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    replay = build_replay(sources, names)
    freshness = build_freshness_watch(sources, names)
    resource = ingest if ingest is not None else default_resource(names.resource_key)
    parts = [
        dg.Definitions(
            assets=[events, rollup],
            asset_checks=checks,
            jobs=[ingest_job, drain_job, rollup_job],
            schedules=[rollup_schedule],
            sensors=[build_source_sensor(s, config, ingest_job, names) for s in sources],
            resources={names.resource_key: resource} if provide_resource else {},
        ),
        replay,  # `event-ingest replay` from the launchpad
        freshness,  # `fresh` red for a late source whether or not a run hosts it
    ]
    if alerts:  # run- and check-failure webhooks (for every job above), one message per incident
        parts.append(build_alerts(sources, parts, names))
    if run_retention:  # hourly deletion of old finished runs (of every job in the Dagster instance)
        parts.append(build_retention(names.prefix))
    return dg.Definitions.merge(*parts)
