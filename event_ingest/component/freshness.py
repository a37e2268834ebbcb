"""Freshness that fails when nothing polls a source: a watch in the sensor daemon, apart from any run.

`fresh` is published by the `ingest` runs, for the sources they host. When no run hosts a source
nothing would publish it, and the last green result would stay green exactly when it matters:

* runs fail to launch (the run launcher, the run queue, a code server that cannot start them);
* a run hosting the source hangs, or lost Redis or Postgres, and its sensor still sees it alive;
* the source's sensor is stopped (the run lets go of the source and says so, once).

The watch is one sensor per instance (``<prefix>freshness_watch``), evaluated by the daemon every
``WATCH_INTERVAL_S``. Each tick reads every source's poll age in ONE statement (any number of
sources) and, for each source past its ``max_lag_s``, asks for one small run of the `fresh` check on
that partition alone (the ``<prefix>freshness`` job: the check, no materialization). That run reads
the same age and records the failure: the check turns red in the UI and the check alert sensor sends
it. One request per late episode (run key: the source and the time of its last poll), so a source
that stays late costs one run, not one per tick; a source that was never polled is late once the
watch has seen it unpolled for its ``max_lag_s``. When the source is polled again, the `ingest` run
hosting it publishes `fresh` green.

Bound: red within ``max_lag_s + WATCH_INTERVAL_S`` plus the launch of one run (5-15 s here), when
the daemon ticks on time. At most ``REQUESTS_PER_TICK`` sources are asked for per tick (the most late
first): when everything is late at once (Redis down for 1,000 sources) the tick names them all in
its log and the rest follow on later ticks, instead of a thousand runs at once.

Where Dagster itself cannot run anything (the code location does not load, the daemon is down),
nothing inside it can say so: ``event-ingest status --check`` is the outside signal (README).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import dagster as dg

from ..config import SourceConfig
from ..core import StoreError
from .names import Names
from .resources import ingest_of

WATCH_INTERVAL_S = 30
REQUESTS_PER_TICK = 10
FRESH_CHECK = "fresh"


@dataclass(frozen=True)
class Late:
    source: str
    age_s: float | None  # None: never polled (for as long as the watch has looked)
    limit_s: float
    last_poll: float | None  # epoch seconds, the database's clock

    @property
    def run_key(self) -> str:
        # One episode: the source and the poll it is late after ("never" for one never polled).
        return f"late:{self.source}:{'never' if self.last_poll is None else f'{self.last_poll:.3f}'}"

    def describe(self) -> str:
        if self.age_s is None:
            return f"{self.source} (never polled, limit {self.limit_s:g} s)"
        return f"{self.source} (last poll {self.age_s:.0f} s ago, limit {self.limit_s:g} s)"


def find_late(
    sources: list[SourceConfig],
    ages: dict[str, tuple[float, float] | None],
    unpolled_since: dict[str, float],
    now: float,
) -> tuple[list[Late], dict[str, float]]:
    """The late sources, most late first, and the never-polled sources' first sighting (the watch's memory).

    Pure: ``ages`` as `Store.poll_ages` reads them; ``unpolled_since`` from the last tick's cursor."""
    late: list[Late] = []
    seen: dict[str, float] = {}
    for source in sources:
        polled = ages.get(source.name)
        if polled is None:
            since = seen[source.name] = unpolled_since.get(source.name, now)
            if now - since > source.max_lag_s:
                late.append(Late(source.name, None, source.max_lag_s, None))
            continue
        age, at = polled
        if age > source.max_lag_s:
            late.append(Late(source.name, age, source.max_lag_s, at))
    late.sort(key=lambda item: -(item.age_s if item.age_s is not None else float("inf")))
    return late, seen


def build_freshness_watch(sources: list[SourceConfig], names: Names = Names()) -> dg.Definitions:
    """The ``<prefix>freshness`` job (the `fresh` check of one partition) and the sensor that asks for it."""
    check_key = dg.AssetCheckKey(names.events, FRESH_CHECK)
    # The job holds `events` (without its other checks) only for its partitions; the watch's requests select
    # the check alone (an empty asset selection), so a run of it never materializes anything.
    job = dg.define_asset_job(
        names.of("freshness"),
        selection=dg.AssetSelection.assets(names.events).without_checks() | dg.AssetSelection.checks(check_key),
        description="The `fresh` check of one source, asked for by the freshness watch when no run publishes it.",
        executor_def=dg.in_process_executor,
    )

    @dg.sensor(
        name=names.of("freshness_watch"),
        job=job,
        minimum_interval_seconds=WATCH_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={names.resource_key},
        description="Turns `fresh` red for a source past its max_lag_s whether or not a run hosts it: one run of "
        "the check per late episode. Stopping it leaves freshness to the ingest runs alone.",
    )
    def _watch(context: dg.SensorEvaluationContext) -> dg.SkipReason | list[dg.RunRequest]:
        memory = json.loads(context.cursor) if context.cursor else {}
        try:
            with ingest_of(context, names).store() as store:
                ages = store.poll_ages([s.name for s in sources])
        except StoreError as exc:
            raise RuntimeError(f"freshness watch: cannot read the poll ages: {exc}") from None
        late, unpolled = find_late(sources, ages, memory.get("unpolled_since", {}), time.time())
        asked_before = memory.get("asked", {})  # source -> the run key of its late episode already asked for
        new = [item for item in late if asked_before.get(item.source) != item.run_key][:REQUESTS_PER_TICK]
        asked = {item.source: item.run_key for item in late if asked_before.get(item.source) == item.run_key}
        asked.update({item.source: item.run_key for item in new})
        context.update_cursor(json.dumps({"unpolled_since": unpolled, "asked": asked}, separators=(",", ":")))
        if not late:
            if unpolled:
                return dg.SkipReason(
                    f"no source late; {len(unpolled)} of {len(sources)} not polled yet "
                    "(each late once unpolled for its max_lag_s)"
                )
            return dg.SkipReason(f"all {len(sources)} sources polled within their max_lag_s")
        context.log.warning(f"late: {', '.join(item.describe() for item in late)}")
        if not new:
            return dg.SkipReason(f"{len(late)} late, each already checked for this episode")
        return [
            dg.RunRequest(
                run_key=item.run_key, partition_key=item.source, asset_selection=[], asset_check_keys=[check_key]
            )
            for item in new
        ]

    return dg.Definitions(jobs=[job], sensors=[_watch])
