"""`event_ingest.EventSources`: event-ingest as a Dagster component.

In a `dg` project, ``dg scaffold defs event_ingest.EventSources partner_events`` writes
``defs/partner_events/defs.yaml``; its attributes are the sources file's schema (``sources:`` and
``runs:``, each field declared once, in event_ingest/config.py) or ``sources_file:``, plus the names
the instance gives its definitions. Several instances live in one code location side by side, beside
the project's own assets, as long as their names differ (``asset_key_prefix``, ``name_prefix``) and
no source is configured twice (a source name is global: its table partition, cursor and Redis keys).

Loading an instance reads its configuration (and the environment variables its headers name) and
nothing else: no Postgres, no Redis. The services come from the resource ``resource_key``, bound by
default to URLs read from EVENT_INGEST_DATABASE_URL and EVENT_INGEST_REDIS_URL when a run or a sensor
tick starts.
"""

# No `from __future__ import annotations`: Dagster reads the fields' annotations at definition time.

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import dagster as dg
from pydantic import BaseModel

from ..config import (
    DATABASE_URL_ENV,
    DEFAULT_SOURCES_FILE,
    REDIS_URL_ENV,
    SOURCES_ENV,
    ConfigError,
    IngestConfig,
    RunSettings,
    SourceConfig,
    load_config,
    parse_config,
    sources_schema,
)
from .build import build_definitions
from .names import DEFAULT_GROUP, DEFAULT_RESOURCE_KEY, Names

log = logging.getLogger("event_ingest.component")

# What Dagster accepts in a job, sensor or asset key part.
_DAGSTER_NAME = re.compile(r"[A-Za-z0-9_]*")


# ---- the YAML schema: the sources file's own, from config.py -----------------------------------------


def _inline(schema: Any, defs: Mapping[str, Any]) -> Any:
    """The schema with its local $refs replaced by what they point at (a field's schema stands alone)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.split("/")[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    return schema


def _field_schema(name: str) -> dict[str, Any]:
    whole = sources_schema()
    return _inline(whole["properties"][name], whole.get("$defs", {}))


def _raw(context: dg.ResolutionContext, value: Any) -> Any:
    # Templates ({{ env.X }}) rendered; validated by config.py in build_defs, with the file's name in errors.
    return context.resolve_value(value)


_SOURCES_SCHEMA = _field_schema("sources")
_RUNS_SCHEMA = _field_schema("runs")

# In Python, a list of SourceConfig (or mappings) and a RunSettings (or a mapping); typed Any here, as Dagster
# would otherwise try to read config.py's validators as YAML fields.
Sources = Annotated[
    Any,
    dg.Resolver(
        _raw,
        model_field_type=list[dict[str, Any]],
        description=_SOURCES_SCHEMA.get("description"),
        json_schema_extra={k: v for k, v in _SOURCES_SCHEMA.items() if k != "description"},
    ),
]
Runs = Annotated[
    Any,
    dg.Resolver(
        _raw,
        model_field_type=dict[str, Any],
        description=_RUNS_SCHEMA.get("description"),
        json_schema_extra={k: v for k, v in _RUNS_SCHEMA.items() if k not in ("description", "default")},
    ),
]


# ---- a source configured twice in one code location -----------------------------------------------------

# Each load of a code location has its own component tree; claims are kept per tree (the last few).
_loads: OrderedDict[int, tuple[object, dict[str, str]]] = OrderedDict()
_loads_lock = threading.Lock()
_warned: set = set()  # (what, where) said once per process


def _claim(context: dg.ComponentLoadContext, sources: list[str], where: str) -> dict[str, str]:
    """Record that the instance at ``where`` configures ``sources``; one ConfigError if another instance of
    this load already does. Returns every claim of this load (all instances' sources, as they load)."""
    tree = getattr(context, "component_tree", None)
    with _loads_lock:
        entry = _loads.get(id(tree))
        if entry is None or entry[0] is not tree:
            entry = _loads[id(tree)] = (tree, {})
            while len(_loads) > 4:
                _loads.popitem(last=False)
        claims = entry[1]
        for name in sources:
            other = claims.get(name)
            if other is not None and other != where:
                raise ConfigError(
                    f"{where}: source {name!r} is also configured in {other}; a source name is global (its table "
                    "partition, cursor and Redis keys): configure it in one EventSources instance only"
                )
        claims.update(dict.fromkeys(sources, where))
        return claims


# ---- the component ------------------------------------------------------------------------------------


class EventSourcesScaffoldParams(BaseModel):
    url: str | None = None  # the first source's URL (default: a placeholder to edit)
    source: str | None = None  # the first source's name (default: from the folder's name)


class EventSourcesScaffolder(dg.Scaffolder[EventSourcesScaffoldParams]):
    """``dg scaffold defs event_ingest.EventSources NAME [--url URL] [--source NAME]``: a ready defs.yaml whose
    names are all derived from NAME, so a second instance scaffolded beside it does not clash."""

    @classmethod
    def get_scaffold_params(cls) -> type[EventSourcesScaffoldParams]:
        return EventSourcesScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[EventSourcesScaffoldParams]) -> None:
        base = scaffold_name(request.target_path.name)
        params = request.params or EventSourcesScaffoldParams()
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            defs_yaml(request.type_name, base, params.source or base, params.url or PLACEHOLDER_URL)
        )


PLACEHOLDER_URL = "https://events.example.com/v1/events"


def scaffold_name(folder: str) -> str:
    """A folder name as a source name and a name prefix: lowercase, a-z0-9_, starting with a letter."""
    name = re.sub(r"[^a-z0-9_]+", "_", folder.lower()).strip("_")
    if not name or not name[0].isalpha():
        name = f"events_{name}".rstrip("_")
    return name[:40]


def defs_yaml(type_name: str, base: str, source: str, url: str) -> str:
    return f"""\
type: {type_name}

attributes:
  # The names of this instance's definitions: asset keys under asset_key_prefix, jobs, sensors and
  # schedules named {base}_..., all in one asset group. Another instance needs other names.
  asset_key_prefix: [{base}]
  name_prefix: {base}_
  group_name: {base}

  # The sources: the sources file's schema (each source's fields, and `runs:`; see event-ingest's
  # README, "Sources file"). Or, instead, `sources_file: sources.yaml` (relative to this folder).
  # A source name is global (its table partition, cursor and Redis keys): one instance per source.
  sources:
    - name: {source}
      url: {json.dumps(url)}
      # page_size: 1000
      # min_interval_ms: 200
      # headers:
      #   Authorization: {{env: PARTNER_TOKEN}}
  # runs:
  #   sources_per_run: 25

  # Postgres and Redis: the resource `{DEFAULT_RESOURCE_KEY}`, its URLs from {DATABASE_URL_ENV} and
  # {REDIS_URL_ENV} (read when a run or sensor tick starts). To bind your own under that key (e.g. in
  # defs/resources.py), set provide_resource: false.
  # resource_key: {DEFAULT_RESOURCE_KEY}
  # provide_resource: true
"""


@dg.scaffold_with(EventSourcesScaffolder)
@dataclass
class EventSources(dg.Component, dg.Resolvable):
    """HTTP event sources into one Postgres table: an `events` asset partitioned by source, sensors, checks, jobs.

    A sensor per source keeps it hosted by long-lived `ingest` runs; checks find gaps, a cursor past
    the stored ids, quarantined items, stale and stuck sources; the drain, rollup and replay jobs and
    alert sensors come along.
    """

    sources: Sources = None
    runs: Runs = None
    # A sources file instead of `sources:` (its own `runs:` too); relative paths from this folder.
    sources_file: str | None = None
    asset_key_prefix: list[str] = field(default_factory=list)
    name_prefix: str = ""
    group_name: str = DEFAULT_GROUP
    # The resource the assets, checks, sensors and jobs use; bound here unless provide_resource is false.
    resource_key: str = DEFAULT_RESOURCE_KEY
    provide_resource: bool = True
    # Alert sensors for this instance's runs and checks (they stay quiet without EVENT_INGEST_ALERT_WEBHOOK_URL).
    alerts: bool = True
    # The hourly job deleting old finished runs of every job in the Dagster instance: once per deployment.
    run_retention: bool = False

    def names(self) -> Names:
        return Names(
            prefix=self.name_prefix,
            asset_key_prefix=tuple(self.asset_key_prefix),
            group=self.group_name,
            resource_key=self.resource_key,
        )

    def ingest_config(self, folder: Path | None = None, origin: str | None = None) -> IngestConfig | None:
        """The validated sources and `runs:` settings; None when nothing is configured anywhere."""
        origin = origin or str(folder or "EventSources")
        if self.sources is not None and self.sources_file is not None:
            raise ConfigError(f"{origin}: give `sources` or `sources_file`, not both")
        if self.sources is not None:
            if all(isinstance(s, SourceConfig) for s in self.sources) and not isinstance(self.runs, Mapping):
                return IngestConfig(sources=list(self.sources), runs=self.runs or RunSettings.model_validate({}))
            document: dict[str, Any] = {"sources": [_plain(s) for s in self.sources]}
            if self.runs is not None:
                document["runs"] = _plain(self.runs)
            return parse_config(document, origin, folder)
        if self.runs is not None:
            raise ConfigError(f"{origin}: `runs` goes with `sources`; a sources file has its own `runs:`")
        if self.sources_file is not None:
            path = Path(self.sources_file).expanduser()
            return load_config(path if path.is_absolute() or folder is None else folder / path)
        # Neither: the project's own route, the sources file of $EVENT_INGEST_SOURCES or ./sources.yaml.
        if not os.environ.get(SOURCES_ENV) and not Path(DEFAULT_SOURCES_FILE).is_file():
            return None
        return load_config()

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        folder = Path(context.path)
        origin = str(folder / "defs.yaml") if (folder / "defs.yaml").is_file() else str(folder)
        names = self.names()
        _check_names(names, origin)
        config = self.ingest_config(folder, origin)
        if config is None:
            if (origin, "sources") not in _warned:  # `dg check defs` loads twice in one process: say it once
                _warned.add((origin, "sources"))
                log.warning(
                    "event-ingest (%s): no sources, so no event-ingest definitions: %s not found and %s is not set. "
                    'Create %s (README, "Sources file"), set %s, give this instance `sources:`, or run '
                    "`event-ingest dev`",
                    origin,
                    DEFAULT_SOURCES_FILE,
                    SOURCES_ENV,
                    DEFAULT_SOURCES_FILE,
                    SOURCES_ENV,
                )
            return dg.Definitions()
        claims = _claim(context, [s.name for s in config.sources], origin)
        unset = [name for name in (DATABASE_URL_ENV, REDIS_URL_ENV) if not os.environ.get(name)]
        if self.provide_resource and unset and (origin, "urls") not in _warned:
            _warned.add((origin, "urls"))
            log.warning(
                "event-ingest (%s): %s not set: sensor ticks and runs fail until %s (or run `event-ingest dev`)",
                origin,
                " and ".join(unset),
                "they are" if len(unset) > 1 else "it is",
            )
        return build_definitions(
            config,
            names=names,
            provide_resource=self.provide_resource,
            run_retention=self.run_retention,
            alerts=self.alerts,
            configured=lambda: set(claims),
        )


def _plain(value: Any) -> Any:
    """A SourceConfig or RunSettings given in code, as the file would spell it (header values kept)."""
    if isinstance(value, SourceConfig):
        data = value.model_dump(exclude={"headers"})
        data["headers"] = {name: header.value for name, header in value.headers}
        return data
    if isinstance(value, RunSettings):
        return value.model_dump()
    return value


def _check_names(names: Names, origin: str) -> None:
    for what, value in (
        ("name_prefix", names.prefix),
        ("group_name", names.group),
        ("resource_key", names.resource_key),
        *(("asset_key_prefix", part) for part in names.asset_key_prefix),
    ):
        if not _DAGSTER_NAME.fullmatch(value) or (what != "name_prefix" and not value):
            raise ConfigError(f"{origin}: {what}: {value!r} is not a Dagster name (letters, digits and _ only)")
