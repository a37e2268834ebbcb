"""Service URLs: where Postgres and Redis are (from the environment), and URLs fit for logs."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .env import DATABASE_POOLER_ENV, DATABASE_URL_ENV, REDIS_URL_ENV
from .wording import ConfigError, shown


def require_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set ({what})")
    return value


def database_url() -> str:
    return require_env(DATABASE_URL_ENV, "the Postgres URL, e.g. postgresql://user@host:5432/db")


def redis_url() -> str:
    return require_env(REDIS_URL_ENV, "the Redis URL, e.g. redis://host:6379/0")


# What may sit between event-ingest and Postgres. Behind a pooler in transaction mode, consecutive transactions
# of one client connection run on different server connections, so a statement prepared in one (psycopg
# prepares a statement after its fifth run) is missing from the next: prepared statements are then off.
POOLER_MODES = {
    "none": "connections go to Postgres itself",
    "session": "a pooler in session mode (a server connection per client connection)",
    "transaction": "a pooler in transaction mode, e.g. PgBouncer's pool_mode = transaction (prepared statements off)",
}


def database_pooler() -> str:
    """The pooler mode ``$EVENT_INGEST_DATABASE_POOLER`` names (unset or empty: none)."""
    value = os.environ.get(DATABASE_POOLER_ENV, "").strip().lower() or "none"
    if value not in POOLER_MODES:
        raise ConfigError(
            f"environment variable {DATABASE_POOLER_ENV}={shown(value)} is not valid; expected one of "
            f"{', '.join(POOLER_MODES)} (transaction: {POOLER_MODES['transaction']})"
        )
    return value


def redact_url(url: str) -> str:
    """A URL fit for logs: the password replaced by ***, in the user:password@ part and in a
    ?password= parameter (libpq and redis-py accept both)."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if parts.query:
        query = [
            (key, "***" if key.lower() in ("password", "pass", "passwd") else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()


def with_database(url: str, dbname: str) -> str:
    """The same Postgres server, another database: ``postgresql://u@h:5432/postgres`` -> ``.../dbname``."""
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))
