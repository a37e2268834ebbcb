"""Postgres and Redis for the dev stack: embedded ones, or the ones the environment names.

`start_services` starts what is missing and registers each server's stop with the teardown as
soon as it runs, so a failure (or a Ctrl-C) between the two still stops the first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import DAGSTER_DATABASE_URL_ENV, DATABASE_URL_ENV, REDIS_URL_ENV
from .embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServer, EmbeddedServerError
from .errors import DevError
from .runtime import Interrupts, Teardown


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


@dataclass(frozen=True)
class ServiceUrls:
    """Where the stack's Postgres and Redis are, and which of them are ours (embedded)."""

    database_url: str
    dagster_database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None = None  # None: from EVENT_INGEST_DATABASE_URL
    redis: EmbeddedRedis | None = None  # None: from EVENT_INGEST_REDIS_URL
    from_env: frozenset[str] = frozenset()  # the variables the URLs came from

    def first_dead(self) -> tuple[str, Path] | None:
        """(what, log) of the first embedded server no longer running."""
        if self.postgres is not None and not self.postgres.is_running():
            return "Postgres", self.postgres.log_path
        if self.redis is not None and not self.redis.is_running():
            return "Redis", self.redis.log_path
        return None


def start_services(
    data_dir: Path,
    logs_dir: Path,
    sources: list[str],
    teardown: Teardown,
    interrupts: Interrupts,
    say: Callable[[str], None],
    environ: Mapping[str, str],
) -> ServiceUrls:
    """Postgres (databases ``event_ingest`` and ``dagster`` under `data_dir`/postgres) unless
    EVENT_INGEST_DATABASE_URL is set, Redis unless EVENT_INGEST_REDIS_URL is set; then the
    schema for `sources`, so `event-ingest status` works at once, before Dagster's first run."""
    from_env: set[str] = set()
    pg: EmbeddedPostgres | None = None
    external = environ.get(DATABASE_URL_ENV)
    if external:
        from_env.add(DATABASE_URL_ENV)
        database_url = external
        # Dagster keeps its own tables (runs, event_logs, ...) in Postgres too. Without a database
        # of its own (EVENT_INGEST_DAGSTER_DATABASE_URL), it shares the events database: its table
        # names do not clash with ours, and we must not create databases on a server not ours.
        dagster_database_url = dagster_storage_url(environ.get(DAGSTER_DATABASE_URL_ENV) or external)
    else:
        say("starting Postgres (embedded)...")
        # on_orphan="stop": the caller holds the state dir's lock, so a server still running on
        # this data dir is a leftover of a run that was killed hard, not someone else's.
        pg = EmbeddedPostgres(
            data_dir / "postgres",
            databases=("event_ingest", "dagster"),
            on_orphan="stop",
            log_file=logs_dir / "postgres.log",
        )
        _start(pg, "Postgres", teardown, say, timeout=60)
        database_url = str(pg.url)
        dagster_database_url = dagster_storage_url(pg.url("dagster"))
    interrupts.check()

    rd: EmbeddedRedis | None = None
    external = environ.get(REDIS_URL_ENV)
    if external:
        from_env.add(REDIS_URL_ENV)
        redis_url = external
        _check_redis(external)
    else:
        say("starting Redis (embedded valkey)...")
        # Not persisted, as the README advises: leases and gate slots are short-lived, and after any restart
        # (from a file or not) the gate waits one hold for every source anyway (core/gate.py).
        rd = EmbeddedRedis(data_dir / "redis", on_orphan="stop", log_file=logs_dir / "redis.log")
        _start(rd, "Redis", teardown, say)
        redis_url = str(rd.url)
    interrupts.check()

    _apply_schema(database_url, sources, embedded=pg is not None)
    return ServiceUrls(database_url, dagster_database_url, redis_url, pg, rd, frozenset(from_env))


def _start(
    server: EmbeddedServer, what: str, teardown: Teardown, say: Callable[[str], None], timeout: float | None = None
) -> None:
    def stop() -> bool:
        try:
            server.stop()
            return True
        except EmbeddedServerError as exc:
            say(f"WARNING: {exc}")
            return False

    teardown.on_close(stop)  # before start: a start that fails halfway leaves a process to stop
    try:
        server.start() if timeout is None else server.start(timeout=timeout)
    except EmbeddedServerError as exc:
        raise DevError(f"event-ingest dev: embedded {what}: {exc}") from None


def _check_redis(url: str) -> None:
    from ..core import RedisUnavailable, connect_redis

    try:
        connect_redis(url).close()
    except RedisUnavailable as exc:
        raise DevError(
            f"event-ingest dev: {exc} ({REDIS_URL_ENV} is set, so no Redis of our own "
            f"is started; unset it to use an embedded one)"
        ) from None


def _apply_schema(database_url: str, sources: list[str], embedded: bool) -> None:
    from ..core import Store, StoreError

    try:
        with Store(database_url, application_name="event-ingest-dev") as store:
            store.apply_schema(sources)
    except StoreError as exc:
        hint = (
            ""
            if embedded
            else f" ({DATABASE_URL_ENV} is set, so no Postgres of our own is started; unset it to use an embedded one)"
        )
        raise DevError(f"event-ingest dev: {exc}{hint}") from None
