"""Asset checks on `events`, per partition (per source).

Each check is a plain function of (store, source) returning an ``AssetCheckResult``. The
same functions back the `@asset_check` definitions (run with a materialization, or from
the UI) and the sources' sensors, which publish them every tick that changes a result - so
the checks stay current while a long run ingests, and even when no run is alive.
"""


import warnings
from typing import Callable

import dagster as dg

from ..config import SourceConfig
from ..core import Store

# Partitioned asset checks are a preview feature in Dagster 1.13; we rely on them on purpose
# (one check result per source), so the warning is noise in every log.
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning)

from .resources import IngestResource  # noqa: E402

GAP_RANGES_LISTED = 20


def no_gaps(store: Store, source: SourceConfig) -> dg.AssetCheckResult:
    gaps = store.gaps(source.name, limit=GAP_RANGES_LISTED)
    return dg.AssetCheckResult(
        passed=not gaps,
        metadata={
            "gap_ranges": dg.MetadataValue.int(len(gaps)),
            "missing_ids": dg.MetadataValue.int(sum(g.size for g in gaps)),
            "first_gaps": ", ".join(f"{g.first_missing}-{g.last_missing}" for g in gaps[:10]) or "none",
        },
    )


def cursor_matches_max_id(store: Store, source: SourceConfig) -> dg.AssetCheckResult:
    status = store.source_status(source.name)
    _, _, max_quarantined = store.quarantine_summary(source.name)
    if status is None:
        return dg.AssetCheckResult(passed=True, metadata={"note": "source not ingested yet"})
    highest = max(status.max_event_id, max_quarantined)
    return dg.AssetCheckResult(
        passed=status.cursor == highest,
        metadata={"cursor": dg.MetadataValue.int(status.cursor), "max_id": dg.MetadataValue.int(highest)},
    )


def quarantine_empty(store: Store, source: SourceConfig) -> dg.AssetCheckResult:
    count, last_reason, _ = store.quarantine_summary(source.name)
    return dg.AssetCheckResult(
        passed=count == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"quarantined": dg.MetadataValue.int(count), "last_reason": last_reason or "none"},
    )


def fresh(store: Store, source: SourceConfig) -> dg.AssetCheckResult:
    age = store.poll_age_s(source.name)
    metadata = {"max_lag_s": dg.MetadataValue.float(float(source.max_lag_s))}
    if age is None:
        return dg.AssetCheckResult(passed=False, metadata={**metadata, "note": "never polled successfully"})
    return dg.AssetCheckResult(
        passed=age <= source.max_lag_s,
        metadata={**metadata, "last_poll_age_s": dg.MetadataValue.float(round(age, 1))},
        description=None if age <= source.max_lag_s else
        f"last successful poll {age:.0f} s ago (limit {source.max_lag_s:g} s): failing, paused or not hosted",
    )


CHECKS: dict[str, tuple[Callable[[Store, SourceConfig], dg.AssetCheckResult], str]] = {
    "no_gaps": (no_gaps, "No ids missing between the lowest and highest stored (or quarantined) id of the source."),
    "cursor_matches_max_id": (cursor_matches_max_id,
                              "The cursor equals the highest id accounted for (stored or quarantined)."),
    "quarantine_empty": (quarantine_empty, "Nothing was quarantined (warning: see `event-ingest quarantine list`)."),
    "fresh": (fresh, "The source was polled successfully within its max_lag_s (sources file): not failing, "
                     "not paused, hosted by a live run."),
}


def evaluate_checks(store: Store, source: SourceConfig) -> dict[str, dg.AssetCheckResult]:
    return {name: fn(store, source) for name, (fn, _) in CHECKS.items()}


def build_checks(partitions: dg.PartitionsDefinition, sources: list[SourceConfig]) -> list[dg.AssetChecksDefinition]:
    by_name = {s.name: s for s in sources}

    def make(name: str, fn, description: str) -> dg.AssetChecksDefinition:
        @dg.asset_check(asset="events", name=name, partitions_def=partitions, description=description)
        def _check(context: dg.AssetCheckExecutionContext, ingest: IngestResource) -> dg.AssetCheckResult:
            with ingest.store() as store:
                return fn(store, by_name[context.partition_key])

        return _check

    return [make(name, fn, description) for name, (fn, description) in CHECKS.items()]
