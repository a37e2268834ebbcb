from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from .devproc import Dev


@pytest.fixture
def dev(tmp_path):
    started: list[Dev] = []

    def start(*args: str) -> Dev:
        d = Dev(tmp_path, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.cleanup()


@pytest.fixture
def own_database(postgres_server_url):
    """A database of this test's own (the schema applied here must not leak into other tests')."""
    name = f"devstack_services_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(postgres_server_url)._replace(path="/" + name))
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
