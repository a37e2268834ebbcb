"""Asset checks on `events`, per partition (per source)."""


import warnings

import dagster as dg

# Partitioned asset checks are a preview feature in Dagster 1.13; we rely on them on purpose
# (one check result per source), so the warning is noise in every log.
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning)

from ..core.checks import cursor_check, gap_check, quarantine_check
from .resources import IngestResource


def build_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="events", partitions_def=partitions, description="No ids missing between the lowest and "
                    "highest stored (or quarantined) id of the source.")
    def no_gaps(context: dg.AssetCheckExecutionContext, ingest: IngestResource) -> dg.AssetCheckResult:
        with ingest.store() as store:
            result = gap_check(store, context.partition_key)
        return dg.AssetCheckResult(
            passed=result.passed,
            description=result.summary(),
            metadata={
                "missing_ids": dg.MetadataValue.int(result.missing),
                "gap_ranges": dg.MetadataValue.int(result.ranges),
                "gap_ranges_complete": dg.MetadataValue.bool(result.ranges_complete),
                "first_gaps": result.listed,
                "accounted_ids": dg.MetadataValue.int(result.accounted),
            },
        )

    @dg.asset_check(asset="events", partitions_def=partitions,
                    description="The cursor equals the highest id accounted for (stored or quarantined).")
    def cursor_matches_max_id(context: dg.AssetCheckExecutionContext, ingest: IngestResource) -> dg.AssetCheckResult:
        with ingest.store() as store:
            result = cursor_check(store, context.partition_key)
        if result.cursor is None:
            return dg.AssetCheckResult(passed=True, metadata={"note": result.summary()})
        return dg.AssetCheckResult(
            passed=result.passed,
            metadata={"cursor": dg.MetadataValue.int(result.cursor), "max_id": dg.MetadataValue.int(result.highest)},
        )

    @dg.asset_check(asset="events", partitions_def=partitions,
                    description="Nothing was quarantined (warning: inspect the quarantine table if not).")
    def quarantine_empty(context: dg.AssetCheckExecutionContext, ingest: IngestResource) -> dg.AssetCheckResult:
        with ingest.store() as store:
            result = quarantine_check(store, context.partition_key)
        return dg.AssetCheckResult(
            passed=result.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"quarantined": dg.MetadataValue.int(result.quarantined),
                      "last_reason": result.last_reason or "none"},
        )

    return [no_gaps, cursor_matches_max_id, quarantine_empty]
