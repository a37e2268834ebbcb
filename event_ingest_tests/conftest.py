"""Shared fixtures: real Postgres, real Redis, real HTTP mock sources.

Postgres and Redis come from EVENT_INGEST_TEST_DATABASE_URL / EVENT_INGEST_TEST_REDIS_URL
when set; otherwise embedded servers (pip-installed binaries) are started once per session.
Each session works in a fresh Postgres database, and each test uses its own source names,
so tests never see each other's rows or Redis keys.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from event_ingest.config import SourceConfig, with_database
from event_ingest.core import Store, connect_redis

TEST_DB_ENV = "EVENT_INGEST_TEST_DATABASE_URL"
TEST_REDIS_ENV = "EVENT_INGEST_TEST_REDIS_URL"


def pytest_configure(config) -> None:
    """Temp files under a directory of this session's own, unless ``--basetemp`` says otherwise.

    As root, embedded Postgres runs as a system user that must traverse the path to its data dir
    (``devstack/embedded/users.py`` grants it). pytest's default temp root, ``/tmp/pytest-of-<user>``,
    is reset to mode 0700 by every pytest session that starts, so a session starting beside this one
    (the mutation tests run several at once; so does anyone running two suites) cut that user off
    its own data directory mid-run."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="event-ingest-pytest-")
        config._event_ingest_basetemp = config.option.basetemp


def pytest_unconfigure(config) -> None:
    made = getattr(config, "_event_ingest_basetemp", None)
    if made and getattr(config, "_event_ingest_passed", False):
        shutil.rmtree(made, ignore_errors=True)  # kept after a failure, for a reader


def pytest_sessionfinish(session, exitstatus) -> None:
    session.config._event_ingest_passed = exitstatus == 0


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def postgres_server_url(services_dir):
    """URL of a Postgres server's maintenance database (used to create the test database)."""
    if os.environ.get(TEST_DB_ENV):
        yield os.environ[TEST_DB_ENV]
        return
    from event_ingest.devstack.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(services_dir / "postgres", fast=True)
    server.start()
    try:
        yield server.url("postgres")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_server_url):
    """A fresh database for this session, dropped at the end."""
    dbname = f"event_ingest_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    yield with_database(postgres_server_url, dbname)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url(services_dir):
    if os.environ.get(TEST_REDIS_ENV):
        yield os.environ[TEST_REDIS_ENV]
        return
    from event_ingest.devstack.embedded import EmbeddedRedis

    server = EmbeddedRedis(services_dir / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url) -> redis.Redis:
    client = connect_redis(redis_url)
    yield client
    client.close()


@pytest.fixture
def store(database_url):
    with Store(database_url) as s:
        s.apply_schema()
        yield s


@pytest.fixture
def source_name() -> str:
    """A source name no other test uses (fresh Redis keys, fresh partition)."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_mock():
    """Start mock sources (real HTTP on 127.0.0.1, free ports); all stopped after the test."""
    from event_ingest.mocksource import MockSource, MockSourceConfig

    started = []

    def start(**config):
        config.setdefault("name", f"mock{len(started)}")
        server = MockSource(MockSourceConfig(**config))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def source_config(name: str, url: str, **overrides) -> SourceConfig:
    """A source as the sources file would give it; tests shorten timeouts to keep cold starts quick."""
    overrides.setdefault("timeout_s", 2.0)
    overrides.setdefault("max_run_seconds", 30.0)
    return SourceConfig(name=name, url=url, **overrides)


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path  # the CA that signed the server certificate
    other_ca_file: Path  # a CA that did not
    cert_file: Path  # server certificate for 127.0.0.1 and localhost
    key_file: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def _make_ca(directory: Path, stem: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{stem}.key",
        "-out",
        f"{stem}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN=event-ingest test {stem}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TlsFiles:
    """A CA made for this session (the openssl command) and a server certificate it signed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test CA")
    directory = tmp_path_factory.mktemp("pki")
    _make_ca(directory, "ca")
    _make_ca(directory, "other_ca")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=directory,
    )
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        cwd=directory,
    )
    return TlsFiles(
        directory / "ca.pem", directory / "other_ca.pem", directory / "server.pem", directory / "server.key"
    )
