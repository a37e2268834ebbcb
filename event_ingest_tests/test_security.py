"""Security: what reaches SQL and Redis, where secrets come from and where they must never go,
and what the mock source listens on.

* Source names become SQL identifiers (partition names) and Redis keys, so only names of one
  strict shape are let through: by the config loader, and again by ``partition_name()``.
* Payloads are always query parameters: an injection string is stored as the text it is.
* Passwords come from the environment (URLs) and never appear in output or logs.
* The mock source binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from event_ingest.cli import build_parser
from event_ingest.config import ConfigError, SourceConfig, load_sources
from event_ingest.core import DrainObserver, DrainOptions, Gate, Lease, Store, connect_redis, drain
from event_ingest.core.progress import DrainStatus
from event_ingest.core.store.schema import partition_name
from event_ingest.mocksource import MockSourceConfig
from event_ingest_tests.conftest import source_config

HOSTILE_NAMES = [
    "a'; DROP TABLE events;--",
    'x") ; --',
    "x'); DROP TABLE source_state; --",
    "../x",
    "has space",
    "new\nline",
    "cr\rreturn",
    "tab\there",
    "nul\x00byte",
    "ünïcode",
    "ｆｕｌｌｗｉｄｔｈ",
    "café",
    "Upper",
    "UPPER",
    "a" * 64,
    "",
    "1_digit_first",
    "_underscore_first",
    "dash-ed",
    "dot.ted",
    "colon:key",  # a Redis key separator
    "glob*",
    "events; --",
]
# `$` in a Python regex also matches just before a final newline.
TRAILING_NEWLINE = pytest.param(
    "name_with_trailing_newline\n",
    id="trailing_newline",
)
NAMES = [pytest.param(n, id=repr(n)[:40]) for n in HOSTILE_NAMES] + [TRAILING_NEWLINE]


def query(store, sql: str, *params) -> list[tuple]:
    rows = store.conn.execute(sql, params).fetchall()
    store.conn.rollback()
    return rows


def assert_tables_intact(store) -> None:
    kinds = dict(
        query(
            store,
            "SELECT relname, relkind FROM pg_class WHERE relname IN "
            "('events', 'source_state', 'quarantine') AND relkind IN ('p', 'r')",
        )
    )
    assert kinds == {"events": "p", "source_state": "r", "quarantine": "r"}
    # No partition of events has a name outside the allowed shape.
    names = [
        n
        for (n,) in query(
            store,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events'::regclass",
        )
    ]
    assert all(n.isascii() and n.replace("_", "").isalnum() and n == n.lower() for n in names), names


# ---- source names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_config_loader_refuses_hostile_source_names(tmp_path, name):
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"name": name, "url": "http://127.0.0.1:1/events"}]}))
    with pytest.raises(ConfigError, match="field 'name'") as refused:
        load_sources(path)
    assert "\n" not in str(refused.value)  # one line, the name shown escaped


@pytest.mark.parametrize("name", [123, None, True, ["a"], {"a": 1}])
def test_the_config_loader_refuses_names_that_are_not_strings(tmp_path, name):
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"name": name, "url": "http://127.0.0.1:1/events"}]}))
    with pytest.raises(ConfigError, match="field 'name'"):
        load_sources(path)


@pytest.mark.parametrize("name", NAMES)
def test_partition_name_refuses_hostile_source_names(name):
    with pytest.raises(ValueError, match="invalid source name"):
        partition_name(name)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_ensure_source_refuses_hostile_names_and_the_tables_survive(store, name):
    with pytest.raises(ValueError, match="invalid source name"):
        store.ensure_source(name)
    with pytest.raises(ValueError, match="invalid source name"):
        store.apply_schema([name])
    assert_tables_intact(store)
    if "\x00" not in name:  # Postgres text cannot even hold a NUL to compare with
        assert query(store, "SELECT count(*) FROM source_state WHERE source = %s", name) == [(0,)]


def test_the_longest_valid_name_gets_a_partition_within_postgres_limits(store):
    name = "a" * 63
    store.ensure_source(name)
    assert len(partition_name(name)) <= 63
    assert_tables_intact(store)


def test_a_drain_given_a_hostile_name_stops_before_sql_and_leaves_no_redis_keys(store, redis_client, make_mock):
    """A SourceConfig cannot even be built with such a name, however it is built (not only by the loader)."""
    mock = make_mock(backlog=3)
    name = "a'; DROP TABLE events;--"
    with pytest.raises(ValueError, match="not a valid source name"):
        drain(SourceConfig(name=name, url=mock.url, timeout_s=1), store=store, redis_client=redis_client)
    assert_tables_intact(store)
    assert not [k for k in redis_client.scan_iter(match="*DROP TABLE*")]
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize("name", ["a'; DROP TABLE events;--", "x\n", "*", "lease:other"])
def test_lease_and_gate_refuse_unvalidated_names_as_redis_keys(redis_client, name):
    with pytest.raises(ValueError, match="invalid source name"):
        Lease(redis_client, name)
    with pytest.raises(ValueError, match="invalid source name"):
        Gate(redis_client, name, interval_s=0.2, hold_s=1, token="t")
    assert not [k for k in redis_client.scan_iter(match="*DROP TABLE*")]


# ---- payloads are parameters ----------------------------------------------------------------

INJECTION_PAYLOADS = {
    1: "'); DROP TABLE events; --",
    2: {"k'; DROP TABLE source_state; --": "v", "nested": ["$$; DROP TABLE quarantine; $$"]},
    3: "\\'; SELECT pg_sleep(10); --",
    4: "%(source)s %s {} $1",
}


def test_payloads_that_look_like_sql_are_stored_verbatim(make_mock, store, redis_client, source_name):
    mock = make_mock(backlog=len(INJECTION_PAYLOADS))
    hostile_item = {"id": "5); DROP TABLE quarantine; --", "payload": "x"}
    events = [{"id": i, "payload": p} for i, p in INJECTION_PAYLOADS.items()] + [hostile_item]
    mock.control({"next": [{"kind": "events", "events": events, "record": True}]})
    stats = drain(source_config(source_name, mock.url, timeout_s=1), store=store, redis_client=redis_client)
    assert stats.status == DrainStatus.CAUGHT_UP, stats.summary()
    assert (
        dict(query(store, "SELECT event_id, payload FROM events WHERE source = %s", source_name)) == INJECTION_PAYLOADS
    )
    ((raw, reason),) = query(store, "SELECT raw, reason FROM quarantine WHERE source = %s", source_name)
    assert json.loads(bytes(raw)) == hostile_item and "not an integer" in reason
    assert_tables_intact(store)


# ---- secrets: from the environment, never in output or logs --------------------------------------

PG_PASSWORD = "pg-S3cret-7f3a9"
REDIS_PASSWORD = "redis-S3cret-91c2e"
SECRETS = [PG_PASSWORD, REDIS_PASSWORD]


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_password(url: str, user: str, password: str) -> str:
    """The same server, with a user and password (the test servers trust everyone, so it still works)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def cli(args: list[str], tmp_path, database_url: str, redis_url: str) -> subprocess.CompletedProcess:
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  - name: s1\n    url: http://127.0.0.1:1/events\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_INGEST_")}
    env.update(
        EVENT_INGEST_SOURCES=str(sources), EVENT_INGEST_DATABASE_URL=database_url, EVENT_INGEST_REDIS_URL=redis_url
    )
    return subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def assert_one_clear_line_without_secrets(done: subprocess.CompletedProcess, expected: str, secrets) -> None:
    output = done.stdout + done.stderr
    for secret in secrets:
        assert secret not in output, output
    assert done.returncode == 2, output
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr


COMMANDS = [pytest.param(["status"], id="status"), pytest.param(["ingest", "s1"], id="ingest")]


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_unreachable_postgres_keeps_both_passwords_out(command, tmp_path, redis_url):
    port = unused_port()
    database_url = f"postgresql://ingest:{PG_PASSWORD}@127.0.0.1:{port}/events"
    done = cli(command, tmp_path, database_url, with_password(redis_url, "default", REDIS_PASSWORD))
    expected = f"event-ingest: cannot connect to Postgres at postgresql://ingest:***@127.0.0.1:{port}/events: "
    assert_one_clear_line_without_secrets(done, expected, SECRETS)


def test_cli_unreachable_redis_keeps_both_passwords_out(tmp_path):
    port = unused_port()
    database_url = f"postgresql://ingest:{PG_PASSWORD}@127.0.0.1:{unused_port()}/events"
    done = cli(["ingest", "s1"], tmp_path, database_url, f"redis://default:{REDIS_PASSWORD}@127.0.0.1:{port}/0")
    assert_one_clear_line_without_secrets(
        done,
        f"event-ingest: cannot reach Redis at redis://default:***@127.0.0.1:{port}/0: ",
        SECRETS,
    )


def test_status_with_redis_unreachable_keeps_its_password_out(tmp_path, database_url, store):
    # status needs Redis only for the lease column: it answers, and says why that column is unknown.
    port = unused_port()
    done = cli(
        ["status", "--json"],
        tmp_path,
        with_password(database_url, "postgres", PG_PASSWORD),
        f"redis://default:{REDIS_PASSWORD}@127.0.0.1:{port}/0",
    )
    assert done.returncode == 0, done.stderr
    for secret in SECRETS:
        assert secret not in done.stdout + done.stderr
    assert f"lease unknown (?): cannot reach Redis at redis://default:***@127.0.0.1:{port}/0" in done.stderr
    assert all(row["lease"] is None for row in json.loads(done.stdout))


def test_cli_percent_encoded_password_is_kept_out_in_both_spellings(tmp_path, redis_url):
    port = unused_port()
    database_url = f"postgresql://ingest:p%40ss%3Aw%2Frd-{PG_PASSWORD}@127.0.0.1:{port}/events"
    done = cli(["status"], tmp_path, database_url, redis_url)
    assert_one_clear_line_without_secrets(
        done,
        "cannot connect to Postgres at postgresql://ingest:***@",
        [PG_PASSWORD, "p@ss:w/rd", "p%40ss%3Aw%2Frd"],
    )


def test_cli_password_in_the_query_string_is_kept_out(tmp_path, redis_url):
    port = unused_port()
    done = cli(["status"], tmp_path, f"postgresql://ingest@127.0.0.1:{port}/events?password={PG_PASSWORD}", redis_url)
    assert_one_clear_line_without_secrets(done, "cannot connect to Postgres", SECRETS)


def test_drain_logs_and_stats_never_hold_the_passwords(make_mock, database_url, redis_url, source_name, caplog):
    """A drain over password-bearing URLs through a failing source and a Postgres connection killed
    mid-drain: every log line (all loggers, DEBUG) and the stats stay free of both passwords."""
    caplog.set_level(logging.DEBUG)
    mock = make_mock(backlog=5)
    mock.control({"next": [{"kind": "status", "status": 500}, {"kind": "body", "body": "<html>"}]})
    source = source_config(source_name, mock.url, timeout_s=1, max_attempts=3)
    redis_client = connect_redis(with_password(redis_url, "default", REDIS_PASSWORD))

    class KillConnection(DrainObserver):
        def fetched(self, progress, page):
            with Store(database_url) as admin:
                admin.conn.execute("SELECT pg_terminate_backend(%s)", (store.conn.info.backend_pid,))
                admin.conn.commit()

    with Store(with_password(database_url, "postgres", PG_PASSWORD)) as store:
        store.apply_schema([source_name])
        stats = drain(
            source,
            store=store,
            redis_client=redis_client,
            options=DrainOptions(backoff_base_s=0.05, observer=KillConnection()),
        )
    redis_client.close()
    assert stats.status == DrainStatus.POSTGRES_DOWN and stats.errors == 2, stats.summary()
    text = caplog.text + json.dumps(stats.to_dict(), default=str)
    assert source_name in caplog.text and "Postgres" in caplog.text  # the lines were there to check
    for secret in SECRETS:
        assert secret not in text


# ---- the mock source listens on loopback only --------------------------------------------------


def test_a_started_mock_source_binds_127_0_0_1(make_mock):
    mock = make_mock(backlog=1)
    address = mock._server.socket.getsockname()
    assert address[0] == "127.0.0.1" and MockSourceConfig().host == "127.0.0.1"
    # Another loopback address reaches a wildcard bind, not this one.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", address[1]), timeout=2).close()


def test_the_cli_mock_source_defaults_to_127_0_0_1():
    argv = ["mock-source", "--name", "m", "--port", "0"]
    args = build_parser(argv).parse_args(argv)
    assert args.host == "127.0.0.1"
