"""Postgres and Redis for the dev stack: embedded ones, or the ones the environment names."""

from __future__ import annotations

import os

from ..config import DAGSTER_DATABASE_URL_ENV, DATABASE_URL_ENV, REDIS_URL_ENV
from .embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from .errors import DevError


def dagster_storage_url(url: str) -> str:
    """The URL to give Dagster's Postgres storage for a ``postgresql://`` URL.

    SQLAlchemy 2.1 maps a plain ``postgresql://`` URL to psycopg 3, under which dagster-postgres'
    ``NOTIFY run_events, :notify_id`` fails (psycopg 3 binds parameters server-side and NOTIFY
    takes none), so no run could ever be created. Name the driver dagster-postgres is written for.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg2://{rest}"
    return url


class Services:
    """DevStack's Postgres and Redis (the attributes are DevStack's, in dev.py)."""

    def _start_postgres(self) -> None:
        external = os.environ.get(DATABASE_URL_ENV)
        if external:
            self.from_env.add(DATABASE_URL_ENV)
            self.database_url = external
            # Dagster keeps its own tables (runs, event_logs, ...) in Postgres too. Without a
            # database of its own (EVENT_INGEST_DAGSTER_DATABASE_URL), it shares the events
            # database: its table names do not clash with ours, and we must not create databases
            # on a server that is not ours.
            self.dagster_database_url = dagster_storage_url(os.environ.get(DAGSTER_DATABASE_URL_ENV) or external)
            return
        self.say("starting Postgres (embedded)...")
        # on_orphan="stop": we hold the state dir's lock, so a server still running on this
        # data dir is a leftover of a run that was killed hard, not someone else's.
        self.pg = EmbeddedPostgres(
            self.state_dir / "postgres",
            databases=("event_ingest", "dagster"),
            on_orphan="stop",
            log_file=self.logs_dir / "postgres.log",
        )
        try:
            self.pg.start(timeout=60)
        except EmbeddedServerError as exc:
            raise DevError(f"event-ingest dev: embedded Postgres: {exc}") from None
        self.database_url = str(self.pg.url)
        self.dagster_database_url = dagster_storage_url(self.pg.url("dagster"))

    def _start_redis(self) -> None:
        external = os.environ.get(REDIS_URL_ENV)
        if external:
            self.from_env.add(REDIS_URL_ENV)
            self.redis_url = external
            from ..core import RedisUnavailable, connect_redis

            try:
                connect_redis(external).close()
            except RedisUnavailable as exc:
                raise DevError(
                    f"event-ingest dev: {exc} ({REDIS_URL_ENV} is set, so no Redis of our own "
                    f"is started; unset it to use an embedded one)"
                ) from None
            return
        self.say("starting Redis (embedded valkey)...")
        # Not persisted, as the README advises: leases and gate slots are short-lived, and after any restart
        # (from a file or not) the gate waits one hold for every source anyway (core/gate.py).
        self.redis = EmbeddedRedis(self.state_dir / "redis", on_orphan="stop", log_file=self.logs_dir / "redis.log")
        try:
            self.redis.start()
        except EmbeddedServerError as exc:
            raise DevError(f"event-ingest dev: embedded Redis: {exc}") from None
        self.redis_url = str(self.redis.url)

    def _apply_schema(self) -> None:
        """So `event-ingest status` works at once, before Dagster's first run."""
        from ..core import Store, StoreError

        try:
            with Store(self.database_url, application_name="event-ingest-dev") as store:
                store.apply_schema(list(self.source_urls))
        except StoreError as exc:
            hint = (
                (f" ({DATABASE_URL_ENV} is set, so no Postgres of our own is started; unset it to use an embedded one)")
                if self.pg is None
                else ""
            )
            raise DevError(f"event-ingest dev: {exc}{hint}") from None
