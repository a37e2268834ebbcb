"""Postgres and Redis for a benchmark: from the environment, else embedded servers in a temp dir."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any, Literal, LiteralString, overload
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from ..config import DATABASE_URL_ENV, REDIS_URL_ENV, with_database


@overload
def services(*, redis: Literal[True] = True, fast_postgres: bool = True) -> ContextManager[tuple[str, str]]: ...


@overload
def services(*, redis: Literal[False], fast_postgres: bool = True) -> ContextManager[tuple[str, None]]: ...


@overload
def services(*, redis: bool, fast_postgres: bool = True) -> ContextManager[tuple[str, str | None]]: ...


@contextlib.contextmanager
def services(*, redis: bool = True, fast_postgres: bool = True) -> Iterator[tuple[str, Any]]:  # Any: see the overloads
    """(database_url, redis_url or None). ``fast_postgres`` turns fsync off in an embedded server;
    cases that time commits keep it on, as a production database has it."""
    db, rd = os.environ.get(DATABASE_URL_ENV), os.environ.get(REDIS_URL_ENV) if redis else None
    with contextlib.ExitStack() as stack:
        if not db or (redis and not rd):
            from ..devstack.embedded import EmbeddedPostgres, EmbeddedRedis

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="event-ingest-bench-")))
            if not db:
                pg = EmbeddedPostgres(tmp / "postgres", fast=fast_postgres)
                db = pg.start()
                stack.callback(pg.stop)
            if redis and not rd:
                rs = EmbeddedRedis(tmp / "redis")
                rd = rs.start()
                stack.callback(rs.stop)
        yield db, rd


def create_database(server_url: str, prefix: str) -> str:
    """A fresh database on the server behind ``server_url``; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def one_row(conn: psycopg.Connection[Any], query: LiteralString | sql.Composed, params: Any = None) -> tuple[Any, ...]:
    """The one row a query of an aggregate or a setting always returns."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return row
