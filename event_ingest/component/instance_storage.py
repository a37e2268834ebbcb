"""Dagster's Postgres instance storage, with connections kept in a small pool per process.

dagster-postgres opens a new Postgres session for every storage call (SQLAlchemy's NullPool). One sensor
tick makes a dozen or more such calls (the instigator's state read and written, each after listing the
schema's tables; the tick written; old ticks purged), and there is one sensor per source: at 50 sources
Dagster's storage started ~120 Postgres backends a second, the largest CPU item of the whole stack (a
backend's start costs more than the query it serves). This storage is dagster-postgres' own (same
tables, same migrations, same configuration keys) with one change: run, event log and schedule storage
take their connections from a pool kept for the life of the process (``pool_size`` held open, as many
again while busy, each checked before use so a restarted Postgres costs nothing but a reconnect).

In ``dagster.yaml``, in place of ``storage: postgres:``::

    storage:
      custom:
        module: event_ingest.component.instance_storage
        class: PooledPostgresStorage
        config:
          postgres_url: {env: EVENT_INGEST_DAGSTER_DATABASE_URL}
          pool_size: 4   # optional

Every process that opens the instance (daemon, code server, each run) holds at most ``pool_size``
idle connections per storage (three); the webserver keeps Dagster's own tuning (one held connection and
a statement timeout: ``optimize_for_webserver`` drops the pool). A process that forks starts its own pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, cast

import sqlalchemy
from dagster import Field, IntSource
from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import create_pg_connection, create_pg_engine, pg_config, pg_url_from_config

DEFAULT_POOL_SIZE = 4
RECYCLE_S = 3600  # a connection older than this is replaced (a proxy or firewall may drop idle ones)


class ConnectionPool:
    """One storage's pooled engine in one process: made on first use, made again after a fork; retired for
    good when the storage is tuned for the webserver or disposed (the storage then connects as Dagster does)."""

    def __init__(self, postgres_url: str, size: int):
        if size < 1:
            raise ValueError(f"pool_size {size} is not valid; expected at least 1")
        self._url = postgres_url
        self._size = size
        self._lock = threading.Lock()
        self._engine: sqlalchemy.engine.Engine | None = None
        self._pid = 0
        self.active = True

    def connect(self) -> AbstractContextManager[sqlalchemy.Connection]:
        return create_pg_connection(self.engine())

    def engine(self) -> sqlalchemy.engine.Engine:
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                # After a fork the parent's connections are not ours to use (or to close): a new engine.
                self._engine = create_pg_engine(
                    self._url,
                    isolation_level="AUTOCOMMIT",
                    pool_size=self._size,
                    max_overflow=self._size,
                    pool_pre_ping=True,
                    pool_recycle=RECYCLE_S,
                )
                self._pid = os.getpid()
            return self._engine

    def retire(self) -> None:
        with self._lock:
            self.active = False
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine = None


class PooledRunStorage(PostgresRunStorage):
    """dagster-postgres' run storage, its connections from a ConnectionPool (until the webserver tunes it)."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, pool_size: int = DEFAULT_POOL_SIZE):
        self.pool = ConnectionPool(postgres_url, pool_size)
        super().__init__(postgres_url, should_autocreate_tables)

    def connect(self) -> AbstractContextManager[sqlalchemy.Connection]:
        return self.pool.connect() if self.pool.active else super().connect()

    def optimize_for_webserver(self, statement_timeout: int, pool_recycle: int, max_overflow: int) -> None:
        super().optimize_for_webserver(statement_timeout, pool_recycle, max_overflow)
        self.pool.retire()

    def dispose(self) -> None:
        super().dispose()
        self.pool.retire()


class PooledScheduleStorage(PostgresScheduleStorage):
    """dagster-postgres' schedule storage (sensor state and ticks), its connections from a ConnectionPool."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, pool_size: int = DEFAULT_POOL_SIZE):
        self.pool = ConnectionPool(postgres_url, pool_size)
        super().__init__(postgres_url, should_autocreate_tables)

    def connect(self, run_id: str | None = None) -> AbstractContextManager[sqlalchemy.Connection]:
        return self.pool.connect() if self.pool.active else super().connect(run_id)

    def optimize_for_webserver(self, statement_timeout: int, pool_recycle: int, max_overflow: int) -> None:
        super().optimize_for_webserver(statement_timeout, pool_recycle, max_overflow)
        self.pool.retire()

    def dispose(self) -> None:
        super().dispose()
        self.pool.retire()


class PooledEventLogStorage(PostgresEventLogStorage):
    """dagster-postgres' event log storage (the runs' events, asset materializations and check results),
    its connections from a ConnectionPool. dagster-postgres routes every event log query through the one
    private ``_connect``; the watcher of a run's events keeps its own connection as before."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, pool_size: int = DEFAULT_POOL_SIZE):
        self.pool = ConnectionPool(postgres_url, pool_size)
        super().__init__(postgres_url, should_autocreate_tables)

    def _connect(self) -> AbstractContextManager[sqlalchemy.Connection]:
        return self.pool.connect() if self.pool.active else super()._connect()

    def optimize_for_webserver(self, statement_timeout: int, pool_recycle: int, max_overflow: int) -> None:
        super().optimize_for_webserver(statement_timeout, pool_recycle, max_overflow)
        self.pool.retire()

    def dispose(self) -> None:
        super().dispose()
        self.pool.retire()


class PooledPostgresStorage(DagsterPostgresStorage):
    """The instance's storage: dagster-postgres' tables and storage, its connections pooled (module docstring).

    A DagsterPostgresStorage whose three storages are the pooled ones above. Its own ``__init__`` would
    build dagster-postgres' NullPool storages first (a schema check each, on every instance opened), so
    this one initialises as that class's base does and builds only the pooled ones."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        pool_size: int = DEFAULT_POOL_SIZE,
        inst_data: Any = None,
    ):
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self.configured_as = inst_data  # ConfigurableClassData: how dagster.yaml named this storage
        self.pooled_runs = PooledRunStorage(postgres_url, should_autocreate_tables, pool_size)
        self.pooled_event_log = PooledEventLogStorage(postgres_url, should_autocreate_tables, pool_size)
        self.pooled_schedules = PooledScheduleStorage(postgres_url, should_autocreate_tables, pool_size)
        super(DagsterPostgresStorage, self).__init__()

    @property
    def inst_data(self) -> Any:
        return self.configured_as

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **cast(Mapping[str, Any], pg_config()),
            "pool_size": Field(
                IntSource,
                is_required=False,
                default_value=DEFAULT_POOL_SIZE,
                description="connections each process keeps open per storage (run, event log, schedule)",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledPostgresStorage:
        if config_value.get("auth_provider"):
            raise ValueError(
                "PooledPostgresStorage takes a postgres_url or postgres_db with a password, not auth_provider; "
                "use `storage: postgres:` for token authentication"
            )
        return cls(
            pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            pool_size=config_value.get("pool_size", DEFAULT_POOL_SIZE),
            inst_data=inst_data,
        )

    @property
    def event_log_storage(self) -> PooledEventLogStorage:
        return self.pooled_event_log

    @property
    def run_storage(self) -> PooledRunStorage:
        return self.pooled_runs

    @property
    def schedule_storage(self) -> PooledScheduleStorage:
        return self.pooled_schedules
