"""Configuration: the sources file, the environment variables, and the defaults they share.

Sources are data, not classes: one YAML file lists them, each with optional per-source overrides of the
defaults. The package, along its seams:

    env.py           every EVENT_INGEST_* name the product reads, and the defaults shared beyond the file
    headers.py       request headers: a literal or {env: VARIABLE}, never shown
    fields.py        the rules of single fields (source name, url, CA bundle)
    declaration.py   each field declared once: validation, the JSON schema and the README's tables
    wording.py       pydantic's errors as one line: file, source, field
    loading.py       reading and validating the sources file
    urls.py          where Postgres and Redis are, and URLs fit for logs

What the rest of the product uses is re-exported here; nothing else is.
"""

from __future__ import annotations

from .declaration import IngestConfig, RunSettings, SourceConfig, sources_schema
from .env import (
    ALERT_WEBHOOK_URL_ENV,
    DAGSTER_DATABASE_URL_ENV,
    DAGSTER_UI_URL_ENV,
    DATABASE_POOLER_ENV,
    DATABASE_URL_ENV,
    DEFAULT_FAILED_RUN_RETENTION_DAYS,
    DEFAULT_RUN_RETENTION_DAYS,
    DEFAULT_SOURCES_FILE,
    FAILED_RUN_RETENTION_DAYS_ENV,
    LEASE_TTL_S,
    LEASE_WAIT_S,
    REDIS_URL_ENV,
    RUN_RETENTION_DAYS_ENV,
    SCHEMA_FILE,
    SOURCES_ENV,
)
from .fields import is_valid_source_name
from .loading import Settings, load_config, load_sources, parse_config
from .urls import database_pooler, database_url, redact_url, redis_url, with_database
from .wording import ConfigError

__all__ = [
    "ALERT_WEBHOOK_URL_ENV",
    "DAGSTER_DATABASE_URL_ENV",
    "DAGSTER_UI_URL_ENV",
    "DATABASE_POOLER_ENV",
    "DATABASE_URL_ENV",
    "DEFAULT_FAILED_RUN_RETENTION_DAYS",
    "DEFAULT_RUN_RETENTION_DAYS",
    "DEFAULT_SOURCES_FILE",
    "FAILED_RUN_RETENTION_DAYS_ENV",
    "LEASE_TTL_S",
    "LEASE_WAIT_S",
    "REDIS_URL_ENV",
    "RUN_RETENTION_DAYS_ENV",
    "SCHEMA_FILE",
    "SOURCES_ENV",
    "ConfigError",
    "IngestConfig",
    "RunSettings",
    "Settings",
    "SourceConfig",
    "database_pooler",
    "database_url",
    "is_valid_source_name",
    "load_config",
    "load_sources",
    "parse_config",
    "redact_url",
    "redis_url",
    "sources_schema",
    "with_database",
]
