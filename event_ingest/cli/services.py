"""Opening Postgres and Redis for a command.

Postgres that cannot be reached, or a database without the schema a read-only command needs, is a
``CliError`` (exit 2) raised here, before any work: a store error after that is the work failing, which
``main`` words as the command's failure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..config import Settings, database_url, load_sources, redis_url
from .errors import CliError

if TYPE_CHECKING:
    import redis

    from ..core import Store


def settings_from_env(sources_file: str | None = None) -> Settings:
    return Settings(database_url=database_url(), redis_url=redis_url(), sources=load_sources(sources_file))


@contextmanager
def _unreachable_is_a_cli_error() -> Iterator[None]:
    """A store error while opening: Postgres is unreachable or refuses us (exit 2, not "the work failed")."""
    from ..core import StoreError

    try:
        yield
    except StoreError as exc:
        raise CliError(f"event-ingest: {exc}") from None


def open_services(settings: Settings) -> tuple[Store, redis.Redis]:
    """Redis (unreachable: RedisUnavailable, which main maps to exit 2), then a store that writes."""
    from ..core import connect_redis

    redis_client = connect_redis(settings.redis_url)
    return open_store(settings.database_url, [s.name for s in settings.sources]), redis_client


def open_store(url: str, sources: Sequence[str] = ()) -> Store:
    """A store for a command that writes: the schema is brought up to date first."""
    from ..core import Store

    with _unreachable_is_a_cli_error():
        store = Store(url)
        store.apply_schema(sources)
    return store


def open_reader(url: str) -> Store:
    """A store for a command that only reads: every transaction READ ONLY, no schema work. The schema must be
    there, at this version (an older one is upgraded by the next drain or command that writes)."""
    from ..core import Store
    from ..core.store.schema import SCHEMA_VERSION

    with _unreachable_is_a_cli_error():
        store = Store(url, application_name="event-ingest-status", read_only=True)
        exists, version = store.schema_found()
    if not exists or version != SCHEMA_VERSION:
        store.close()
        found = "no event-ingest tables" if not exists else f"schema version {version}"
        raise CliError(
            f"event-ingest: the database holds {found}, this event-ingest reads version {SCHEMA_VERSION}; "
            "nothing changed (the schema is made and upgraded by ingest runs and by the commands that "
            "write, e.g. `event-ingest ingest`)"
        )
    return store
