"""The names one instance of event-ingest gives its definitions, in one place.

Several instances can live in one code location (a team's own project with two of them, beside its
own assets), so every name Dagster keys on is built here: asset keys under ``asset_key_prefix``; jobs,
sensors and schedules under ``prefix``; the resource they all use under ``resource_key``. Check names
are not prefixed: a check is keyed by its asset, which already is. The sources' own names are not
prefixed either: a source name is global (its table partition, cursor, lease and gate keys).
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

DEFAULT_GROUP = "ingest"
DEFAULT_RESOURCE_KEY = "event_ingest"


@dataclass(frozen=True)
class Names:
    prefix: str = ""  # jobs, sensors, schedules
    asset_key_prefix: tuple[str, ...] = ()
    group: str = DEFAULT_GROUP
    resource_key: str = DEFAULT_RESOURCE_KEY

    def of(self, name: str) -> str:
        """A job, sensor or schedule name."""
        return f"{self.prefix}{name}"

    def asset(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([*self.asset_key_prefix, name])

    @property
    def events(self) -> dg.AssetKey:
        return self.asset("events")

    @property
    def rollup(self) -> dg.AssetKey:
        return self.asset("events_per_minute")

    def source_sensor(self, source: str) -> str:
        return self.of(f"ingest_{source}")
