"""Asset checks on `events`, per partition (per source)."""


import warnings

import dagster as dg

# Partitioned asset checks are a preview feature in Dagster 1.13; we rely on them on purpose
# (one check result per source), so the warning is noise in every log.
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning)

from .resources import IngestResource


def build_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="events", partitions_def=partitions, description="No ids missing between the lowest and "
                    "highest stored (or quarantined) id of the source.")
    def no_gaps(context: dg.AssetCheckExecutionContext, ingest: IngestResource) -> dg.AssetCheckResult:
        source = context.partition_key
        with ingest.store() as store:
            gaps = store.gaps(source, limit=20)
        return dg.AssetCheckResult(
            passed=not gaps,
            metadata={
                "gap_ranges": dg.MetadataValue.int(len(gaps)),
                "missing_ids": dg.MetadataValue.int(sum(g.size for g in gaps)),
                "first_gaps": ", ".join(f"{g.first_missing}-{g.last_missing}" for g in gaps[:10]) or "none",
            },
        )

    @dg.asset_check(asset="events", partitions_def=partitions,
                    description="The cursor equals the highest id accounted for (stored or quarantined).")
    def cursor_matches_max_id(context: dg.AssetCheckExecutionContext, ingest: IngestResource) -> dg.AssetCheckResult:
        source = context.partition_key
        with ingest.store() as store:
            status = store.source_status(source)
            _, _, max_quarantined = store.quarantine_summary(source)
        if status is None:
            return dg.AssetCheckResult(passed=True, metadata={"note": "source not ingested yet"})
        highest = max(status.max_event_id, max_quarantined)
        return dg.AssetCheckResult(
            passed=status.cursor == highest,
            metadata={"cursor": dg.MetadataValue.int(status.cursor), "max_id": dg.MetadataValue.int(highest)},
        )

    @dg.asset_check(asset="events", partitions_def=partitions,
                    description="Nothing was quarantined (warning: inspect the quarantine table if not).")
    def quarantine_empty(context: dg.AssetCheckExecutionContext, ingest: IngestResource) -> dg.AssetCheckResult:
        source = context.partition_key
        with ingest.store() as store:
            count, last_reason, _ = store.quarantine_summary(source)
        return dg.AssetCheckResult(
            passed=count == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"quarantined": dg.MetadataValue.int(count), "last_reason": last_reason or "none"},
        )

    return [no_gaps, cursor_matches_max_id, quarantine_empty]
