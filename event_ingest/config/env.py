"""Every ``EVENT_INGEST_*`` variable the product reads, and the defaults shared beyond the sources file.

Each name is written here once and imported elsewhere; ``dagster.yaml`` and ``docker-compose.yml`` spell
them out (tests cross-check them).
"""

from __future__ import annotations

# ---- environment variables: every EVENT_INGEST_* name the product reads ---------------------------

SOURCES_ENV = "EVENT_INGEST_SOURCES"  # path of the sources file
DATABASE_URL_ENV = "EVENT_INGEST_DATABASE_URL"  # Postgres for events
REDIS_URL_ENV = "EVENT_INGEST_REDIS_URL"  # Redis for leases and the gate
DATABASE_POOLER_ENV = "EVENT_INGEST_DATABASE_POOLER"  # "transaction": a pooler (PgBouncer) in transaction mode
DAGSTER_DATABASE_URL_ENV = "EVENT_INGEST_DAGSTER_DATABASE_URL"  # Postgres for Dagster's own storage
ALERT_WEBHOOK_URL_ENV = "EVENT_INGEST_ALERT_WEBHOOK_URL"  # where the alert sensors POST
DAGSTER_UI_URL_ENV = "EVENT_INGEST_DAGSTER_UI_URL"  # links in alerts
RUN_RETENTION_DAYS_ENV = "EVENT_INGEST_RUN_RETENTION_DAYS"  # days finished runs are kept
FAILED_RUN_RETENTION_DAYS_ENV = "EVENT_INGEST_FAILED_RUN_RETENTION_DAYS"  # days failed runs are kept

# ---- defaults used beyond the sources file ----------------------------------------------------------

DEFAULT_SOURCES_FILE = "sources.yaml"
SCHEMA_FILE = "sources.schema.json"  # the JSON schema of the sources file, at the top of the repo
LEASE_TTL_S = 6.0  # a dead holder's (run's, server's) source is free again after about this long
LEASE_WAIT_S = 5.0  # how long a one-off drain or skip waits for a busy lease
DEFAULT_RUN_RETENTION_DAYS = 7.0  # unless $EVENT_INGEST_RUN_RETENTION_DAYS says otherwise
DEFAULT_FAILED_RUN_RETENTION_DAYS = 30.0  # unless $EVENT_INGEST_FAILED_RUN_RETENTION_DAYS says otherwise
