"""event-ingest: many HTTP event sources into one Postgres table, orchestrated by Dagster."""

__version__ = "0.1.0"
