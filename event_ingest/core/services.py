"""Connections to the two services, with errors that say what and where.

Redis is named by a ``redis://`` (or ``rediss://``, ``unix://``) URL, or, for a highly available Redis
watched by Sentinel, by ``redis+sentinel://[[user]:password@]host1:26379[,host2:26379...]/service[/db]``:
the sentinels to ask, the name they know the primary by, and the database. The credentials are those of
the Redis servers, as in a ``redis://`` URL; ``?sentinel_auth=yes`` sends them to the sentinels too (for
sentinels that ask for the same password). The client asks the sentinels where the primary is, and asks
again after a failover (redis-py's ``Sentinel``); the spacing gate notices the new server by itself.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.sentinel import MasterNotFoundError, Sentinel

from ..config import redact_url

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
SENTINEL_FORM = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]"


class RedisUnavailable(RuntimeError):
    pass


class _Sentinels(Sentinel):
    """redis-py's Sentinel, saying in a few words when no sentinel named a primary (its own message lists the
    repr of every sentinel client, hundreds of characters each, wherever a failed call is reported)."""

    def discover_master(self, service_name):
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError:
            where = ", ".join(
                f"{c.connection_pool.connection_kwargs['host']}:{c.connection_pool.connection_kwargs['port']}"
                for c in self.sentinels
            )
            raise MasterNotFoundError(
                f"no sentinel at {where} named a primary for {service_name!r} (sentinels down, or another service name)"
            ) from None


def connect_redis(url: str, *, timeout_s: float = 5.0, check: bool = True) -> redis.Redis:
    """A Redis client for ``url``; with ``check``, fails at once with one clear line if Redis does not answer."""
    timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    try:
        if urlsplit(url).scheme == SENTINEL_SCHEME:
            client = _sentinel_client(url, timeouts)
        else:
            client = redis.Redis.from_url(url, **timeouts)
    except ValueError as exc:
        raise RedisUnavailable(f"bad Redis URL {redact_url(url)!r}: {exc}") from None
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    return client


def _sentinel_client(url: str, timeouts: dict) -> redis.Redis:
    """The primary of a Sentinel-watched service, found (and found again after a failover) through the sentinels."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for member in hosts.split(","):
        host, colon, port = member.rpartition(":") if ":" in member else (member, "", "")
        if not host or (colon and not port.isdigit()):
            raise ValueError(f"sentinel address {member!r} is not host[:port] (the form is {SENTINEL_FORM})")
        sentinels.append((host, int(port) if port else SENTINEL_PORT))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"the path must be /service or /service/db (the form is {SENTINEL_FORM})")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    sentinel_auth = options.pop("sentinel_auth", "no").lower()
    if options or sentinel_auth not in ("yes", "no", "true", "false", "1", "0"):
        raise ValueError(f"the only option is sentinel_auth=yes|no (the form is {SENTINEL_FORM})")
    credentials = {k: unquote(v) for k, v in (("username", parts.username), ("password", parts.password)) if v}
    server = {**timeouts, **credentials, "db": int(path[1]) if len(path) == 2 else 0}
    to_sentinels = {**timeouts, **(credentials if sentinel_auth in ("yes", "true", "1") else {})}
    return _Sentinels(sentinels, sentinel_kwargs=to_sentinels).master_for(path[0], **server)
