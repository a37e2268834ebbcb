"""The `events` asset (one partition per source) and a pandas rollup downstream of it.

Continuous ingestion is the `ingest` job's (long-lived runs, see ingest_job.py): they record
progress as materializations of these partitions. Materializing a partition here - from the UI,
a backfill, `dg launch` - is one bounded drain of that source: to its head, or its
`max_run_seconds`. It takes the lease like anyone, so while a run hosts the source it ends at
once, saying so, and nothing is fetched twice.
"""

from typing import cast

import dagster as dg
import pandas as pd

from ..config import SourceConfig
from ..core.checks import verify_counters
from ..core.drain import DrainStats
from ..core.store.audit import CounterAudit
from .names import Names
from .resources import ingest_of


def drain_metadata(stats: DrainStats) -> dict:
    """What the UI plots for each materialization of a partition."""
    metadata = {
        "status": str(stats.status),
        "events": dg.MetadataValue.int(stats.events_stored),
        "pages": dg.MetadataValue.int(stats.pages),
        "requests": dg.MetadataValue.int(stats.requests),
        "errors": dg.MetadataValue.int(stats.errors),
        "quarantined": dg.MetadataValue.int(stats.quarantined),
        "cursor": dg.MetadataValue.int(stats.cursor_after or 0),
        "epoch": dg.MetadataValue.int(stats.epoch or 0),
        "duration_s": dg.MetadataValue.float(float(stats.duration_s)),
        "consumer": stats.consumer,
        "dagster/table_name": "events",
    }
    if stats.min_gap_ms is not None:
        metadata["min_gap_ms"] = dg.MetadataValue.float(float(stats.min_gap_ms))
    if stats.median_gap_ms is not None:  # set with min_gap_ms
        metadata["median_gap_ms"] = dg.MetadataValue.float(float(stats.median_gap_ms))
    if stats.lag_s is not None:
        metadata["lag_s"] = dg.MetadataValue.float(float(stats.lag_s))
    if stats.error:
        metadata["error"] = stats.error
    return metadata


def build_events_asset(
    sources: list[SourceConfig], partitions: dg.PartitionsDefinition, names: Names = Names()
) -> dg.AssetsDefinition:
    by_name = {s.name: s for s in sources}

    @dg.asset(
        key=names.events,
        partitions_def=partitions,
        group_name=names.group,
        required_resource_keys={names.resource_key},
        kinds={"postgres", "python"},
        description="Events of every configured source, one partition per source. Materializing a partition "
        "drains that source (lease, fence, 200 ms spacing gate) until caught up or out of time.",
    )
    def events(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        ingest = ingest_of(context, names)
        source = by_name[context.partition_key]
        stats = ingest.drain(source, logger=context.log)
        metadata = drain_metadata(stats)
        with ingest.store() as store:
            rows = store.row_counts([source.name]).get(source.name)
        if rows is not None:
            metadata["dagster/row_count"] = dg.MetadataValue.int(rows)
        if stats.status == "lease_busy":
            metadata["note"] = "another consumer (a running `ingest` run) holds the source; nothing fetched here"
        if not stats.ok:
            # Pages committed before the failure stay committed; the run shows red with the reason.
            raise dg.Failure(description=stats.error or stats.status, metadata=metadata)
        return dg.MaterializeResult(metadata=metadata)

    return events


def build_rollup_asset(sources: list[SourceConfig], names: Names = Names()) -> dg.AssetsDefinition:
    sources_names = [s.name for s in sources]

    @dg.asset(
        key=names.rollup,
        deps=[names.events],
        group_name=names.group,
        required_resource_keys={names.resource_key},
        kinds={"pandas", "postgres"},
        description="Events ingested per minute over the last hour, every source side by side (pandas), from the "
        "table events_per_minute that Postgres keeps as events are written and deleted. Refreshed by the "
        "schedule `events_per_minute_every_10_minutes` (its name prefixed like the jobs'): one small run for all "
        "sources, not one per source. Each run also audits 16 blocks of each source's counters against the rows "
        "(drift found makes `no_gaps` fail and names `event-ingest recount`).",
    )
    def events_per_minute(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        with ingest_of(context, names).store() as store:
            # At most 61 rows per source, whatever the table holds: the counts are kept as rows land.
            rows = [(name, minute, n) for name in sources_names for minute, n in store.recent_minutes(name, hours=1)]
            # The counter audit rides on the same schedule: a bounded part of each source's counters
            # recounted from its rows (README, step 9: drift found within ceil(blocks / 16) runs).
            audits = verify_counters(store, sources_names)
        drifted = sorted(name for name, a in audits.items() if isinstance(a, CounterAudit) and a.drift)
        failed = {name: str(a) for name, a in audits.items() if not isinstance(a, CounterAudit)}
        for name in drifted:
            context.log.warning(cast(CounterAudit, audits[name]).summary())
        for name, error in failed.items():
            context.log.warning(f"counter audit of {name} failed: {error}")
        frame = pd.DataFrame(rows, columns=["source", "minute", "events"])
        per_source = (
            frame.groupby("source")["events"].agg(["sum", "max"]).reindex(sources_names, fill_value=0)
            if len(frame)
            else pd.DataFrame({"sum": 0, "max": 0}, index=sources_names)
        )
        table = "| source | events, last hour | peak minute |\n|---|---:|---:|\n" + "\n".join(
            f"| {name} | {int(row['sum'])} | {int(row['max'])} |" for name, row in per_source.iterrows()
        )
        return dg.MaterializeResult(
            metadata={
                "sources": dg.MetadataValue.int(len(sources_names)),
                "events_last_hour": dg.MetadataValue.int(int(per_source["sum"].sum())),
                "peak_per_minute": dg.MetadataValue.int(
                    int(frame.groupby("minute")["events"].sum().max()) if len(frame) else 0
                ),
                "per_source": dg.MetadataValue.md(table),
                "counter_audit_blocks": dg.MetadataValue.int(
                    sum(len(a.checked) for a in audits.values() if isinstance(a, CounterAudit))
                ),
                "counter_drift_sources": ", ".join(drifted) or "none",
                "counter_audit_failed": ", ".join(sorted(failed)) or "none",
            }
        )

    return events_per_minute
