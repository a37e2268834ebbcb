"""Asset checks on `events`, per partition (per source).

Each check is a plain function of (store, source) returning an ``AssetCheckResult``, answered
from counters (O(1) at any table size). The same functions back the `@asset_check` definitions
(run with a one-off materialization, or from the UI) and the long-lived `ingest` runs, which
publish them for each source they host whenever a result changes - so the checks stay current
while a run ingests for hours.
"""

import warnings
from collections.abc import Callable

import dagster as dg

from ..config import SourceConfig
from ..core import Store
from ..core.checks import cursor_check, gap_check, quarantine_check
from ..core.status import stuck_check
from .names import Names
from .resources import ingest_of

# Partitioned asset checks are a preview feature in Dagster 1.13; we rely on them on purpose
# (one check result per source), so the warning is noise in every log.
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning)


def no_gaps(store: Store, source: SourceConfig) -> dg.AssetCheckResult:
    result = gap_check(store, source.name)
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


def cursor_matches_max_id(store: Store, source: SourceConfig) -> dg.AssetCheckResult:
    result = cursor_check(store, source.name)
    if result.cursor is None:
        return dg.AssetCheckResult(passed=True, metadata={"note": result.summary()})
    return dg.AssetCheckResult(
        passed=result.passed,
        metadata={"cursor": dg.MetadataValue.int(result.cursor), "max_id": dg.MetadataValue.int(result.highest)},
    )


def quarantine_empty(store: Store, source: SourceConfig) -> dg.AssetCheckResult:
    result = quarantine_check(store, source.name)
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"quarantined": dg.MetadataValue.int(result.quarantined), "last_reason": result.last_reason or "none"},
    )


def fresh(store: Store, source: SourceConfig) -> dg.AssetCheckResult:
    age = store.poll_age_s(source.name)
    metadata = {"max_lag_s": dg.MetadataValue.float(float(source.max_lag_s))}
    if age is None:
        return dg.AssetCheckResult(passed=False, metadata={**metadata, "note": "never polled successfully"})
    return dg.AssetCheckResult(
        passed=age <= source.max_lag_s,
        metadata={**metadata, "last_poll_age_s": dg.MetadataValue.float(round(age, 1))},
        description=None
        if age <= source.max_lag_s
        else f"last successful poll {age:.0f} s ago (limit {source.max_lag_s:g} s): failing, paused or not hosted",
    )


def not_stuck(store: Store, source: SourceConfig) -> dg.AssetCheckResult:
    result = stuck_check(store, source.name)
    if result.stuck is None:
        return dg.AssetCheckResult(passed=True, description=result.summary())
    stuck = result.stuck
    return dg.AssetCheckResult(
        passed=False,
        description=result.summary(),
        metadata={
            "cursor": dg.MetadataValue.int(stuck.at_cursor),
            "quarantine_id": dg.MetadataValue.int(stuck.quarantine_id),
            "seen_count": dg.MetadataValue.int(stuck.seen_count),
            "reason": stuck.reason[:1000],
        },
    )


# One check of one source, with the store open.
CheckFn = Callable[[Store, SourceConfig], dg.AssetCheckResult]

CHECKS: dict[str, tuple[CheckFn, str]] = {
    "no_gaps": (no_gaps, "No ids missing between the lowest and highest stored (or quarantined) id of the source."),
    "cursor_matches_max_id": (
        cursor_matches_max_id,
        "The cursor equals the highest id accounted for (stored or quarantined).",
    ),
    "quarantine_empty": (quarantine_empty, "Nothing was quarantined (warning: see `event-ingest quarantine list`)."),
    "fresh": (
        fresh,
        "The source was polled successfully within its max_lag_s (sources file): not failing, "
        "not paused, hosted by a live run.",
    ),
    "not_stuck": (
        not_stuck,
        "Nothing unreadable holds the cursor: no item without a readable id the page stops "
        "before, no body that is not a page served again and again at the cursor. A stuck "
        "source is moved on with `event-ingest skip SOURCE --to-id N` (see the README).",
    ),
}


def evaluate_checks(store: Store, source: SourceConfig) -> dict[str, dg.AssetCheckResult]:
    return {name: fn(store, source) for name, (fn, _) in CHECKS.items()}


def build_checks(
    partitions: dg.PartitionsDefinition, sources: list[SourceConfig], names: Names = Names()
) -> list[dg.AssetChecksDefinition]:
    by_name = {s.name: s for s in sources}

    def make(name: str, fn: CheckFn, description: str) -> dg.AssetChecksDefinition:
        @dg.asset_check(
            asset=names.events,
            name=name,
            partitions_def=partitions,
            description=description,
            required_resource_keys={names.resource_key},
        )
        def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
            with ingest_of(context, names).store() as store:
                return fn(store, by_name[context.partition_key])

        return _check

    return [make(name, fn, description) for name, (fn, description) in CHECKS.items()]
