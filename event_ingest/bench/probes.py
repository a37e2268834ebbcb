"""What the services of a live case are doing: their processes (for CPU and memory), the calls Redis
served, the connections Postgres holds."""

from __future__ import annotations

from pathlib import Path

import psycopg

from ..devstack.procs import process_tree
from .services import one_row


def postgres_pids(url: str) -> list[int]:
    """The Postgres server's processes (postmaster and every backend), found from a backend of ours."""
    with psycopg.connect(url) as conn:  # read /proc while our backend is alive
        backend = conn.info.backend_pid
        try:
            postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return []  # not on this host
    return list(process_tree([postmaster]))


def redis_pid(url: str) -> list[int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return [pid] if Path(f"/proc/{pid}").exists() else []


# What clients send (round trips); the commands a Lua script runs inside Redis (TIME, HGET, ...) are
# counted apart by Redis and are not network calls.
CLIENT_COMMANDS = ("evalsha", "eval", "set", "get", "mget", "del", "ping", "script|load")


def redis_commands(url: str) -> tuple[int, int]:
    """(calls clients made, commands Redis executed, scripts' insides included), so far."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        total = int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()
    calls = sum(int(v["calls"]) for k, v in stats.items() if k.removeprefix("cmdstat_") in CLIENT_COMMANDS)
    return calls, total


def postgres_connections(url: str) -> int:
    """Connections to the events database right now (Dagster's own storage is another database)."""
    with psycopg.connect(url) as conn:
        return int(one_row(conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")[0])
