"""event-ingest: many HTTP event sources into one Postgres table, orchestrated by Dagster.

``event_ingest.EventSources`` is the Dagster component (``dg list components`` shows it; the
``dagster_dg_cli.registry_modules`` entry point in pyproject.toml registers this package). It is
imported on first use only, so that importing the engine (``event_ingest.core``) never imports Dagster.
"""

from .version import __version__ as __version__  # the package's version, as every package says it

_DAGSTER_EXPORTS = ("EventSources", "IngestResource")


def __getattr__(name: str) -> type:
    if name in _DAGSTER_EXPORTS:
        from . import component

        return getattr(component, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_DAGSTER_EXPORTS])
