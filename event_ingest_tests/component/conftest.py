"""A real Dagster instance for the Dagster layer's tests: Postgres-backed storage (dagster-postgres,
as in dagster.yaml) in a database of its own, under a temporary DAGSTER_HOME."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import psycopg
import pytest


@pytest.fixture
def dagster_storage_url(postgres_server_url):
    """A fresh database for Dagster's runs, event logs and schedules, dropped afterwards."""
    dbname = f"event_ingest_dagster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    parts = urlsplit(postgres_server_url)
    # The driver named, as dagster.yaml explains (psycopg 3 breaks dagster-postgres' run notifications).
    yield urlunsplit(parts._replace(scheme="postgresql+psycopg2", path="/" + dbname))
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture
def dagster_instance(dagster_storage_url):
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": dagster_storage_url}}}) as instance:
        yield instance


@pytest.fixture(autouse=True)
def _slot_claims_do_not_outlive_their_test(request):
    """A sensor that asks for a run claims its slot in Redis for 30 s (sensors.py); the tests share one
    Redis and the job names `ingest`, so a claim left behind would make the next test's sensors skip."""
    yield
    if "redis_url" in request.fixturenames or "redis_client" in request.fixturenames:
        import redis

        from event_ingest.component.sensors import SLOT_CLAIM_PREFIX

        with redis.Redis.from_url(request.getfixturevalue("redis_url")) as client:
            claims = list(client.scan_iter(match=SLOT_CLAIM_PREFIX + "*"))
            if claims:
                client.delete(*claims)
