"""start_services alone: the Postgres and Redis the environment names, or embedded ones whose stops
go on the teardown as they start."""

from __future__ import annotations

import psycopg
import pytest

from event_ingest.config import DAGSTER_DATABASE_URL_ENV, DATABASE_URL_ENV, REDIS_URL_ENV
from event_ingest.devstack.errors import DevError
from event_ingest.devstack.procs import free_port
from event_ingest.devstack.runtime import Interrupted, Interrupts, Teardown
from event_ingest.devstack.services import ServiceUrls, dagster_storage_url, start_services

SOURCES = ["shop", "crm"]


def start(tmp_path, environ, teardown=None, interrupts=None) -> tuple[ServiceUrls, list[str]]:
    said: list[str] = []
    services = start_services(
        tmp_path, tmp_path, SOURCES, teardown or Teardown(), interrupts or Interrupts(), said.append, environ
    )
    return services, said


def test_dagster_storage_url_names_psycopg2():
    assert dagster_storage_url("postgresql://u@h:5/db") == "postgresql+psycopg2://u@h:5/db"
    assert dagster_storage_url("postgres://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert dagster_storage_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_given_services_are_used_and_nothing_is_started(tmp_path, own_database, redis_url):
    teardown = Teardown()
    environ = {DATABASE_URL_ENV: own_database, REDIS_URL_ENV: str(redis_url)}
    services, said = start(tmp_path, environ, teardown)
    assert (services.database_url, services.redis_url) == (own_database, str(redis_url))
    assert services.dagster_database_url == dagster_storage_url(own_database)  # Dagster shares it
    assert services.postgres is None and services.redis is None and services.first_dead() is None
    assert services.from_env == {DATABASE_URL_ENV, REDIS_URL_ENV}
    assert teardown.stops == 0 and said == [] and list(tmp_path.iterdir()) == []
    with psycopg.connect(own_database) as conn:  # the schema is there for `event-ingest status`
        assert sorted(r[0] for r in conn.execute("SELECT source FROM source_state")) == sorted(SOURCES)


def test_a_dagster_database_of_its_own(tmp_path, own_database, redis_url):
    environ = {
        DATABASE_URL_ENV: own_database,
        REDIS_URL_ENV: str(redis_url),
        DAGSTER_DATABASE_URL_ENV: "postgresql://d@h/dagster",
    }
    services, _ = start(tmp_path, environ)
    assert services.dagster_database_url == "postgresql+psycopg2://d@h/dagster"


def test_an_unreachable_given_redis_fails_with_one_line(tmp_path, own_database):
    environ = {DATABASE_URL_ENV: own_database, REDIS_URL_ENV: f"redis://127.0.0.1:{free_port()}/0"}
    with pytest.raises(DevError) as err:
        start(tmp_path, environ)
    message = str(err.value)
    assert "\n" not in message and f"({REDIS_URL_ENV} is set, so no Redis of our own is started" in message


def test_an_interrupt_stops_before_the_next_server(tmp_path, own_database, redis_url):
    interrupts = Interrupts()
    interrupts.on_signal(2, None)
    with pytest.raises(Interrupted):
        start(tmp_path, {DATABASE_URL_ENV: own_database, REDIS_URL_ENV: "redis://127.0.0.1:1/0"}, None, interrupts)


@pytest.mark.slow
def test_embedded_servers_are_on_the_teardown(tmp_path):
    teardown = Teardown()
    with teardown:
        services, said = start(tmp_path / "state", {}, teardown)
        assert said == ["starting Postgres (embedded)...", "starting Redis (embedded valkey)..."]
        assert teardown.stops == 2 and services.from_env == frozenset()
        assert services.postgres is not None and services.redis is not None and services.first_dead() is None
        assert services.dagster_database_url.startswith("postgresql+psycopg2://")
        assert services.dagster_database_url.endswith("/dagster")
        with psycopg.connect(services.database_url) as conn:
            assert conn.execute("SELECT count(*) FROM source_state").fetchone() == (len(SOURCES),)
    assert teardown.clean
    assert services.first_dead() == ("Postgres", services.postgres.log_path)
