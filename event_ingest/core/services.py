"""Connections to the two services, with errors that say what and where."""

from __future__ import annotations

import redis

from ..config import redact_url


class RedisUnavailable(RuntimeError):
    pass


def connect_redis(url: str, *, timeout_s: float = 5.0, check: bool = True) -> redis.Redis:
    """A Redis client for ``url``; with ``check``, fails at once with one clear line if Redis does not answer."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except ValueError as exc:
        raise RedisUnavailable(f"bad Redis URL {redact_url(url)!r}: {exc}") from None
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    return client
