"""Lease: one Redis lock per source, so only one consumer drains it at a time.

The lease avoids wasted duplicate work; it does not make stale holders
harmless (the fence in Postgres does that). It is redis-py's ``Lock``: the
token is random per holder, acquisition is ``SET NX PX``, and renewal and
release are compare-and-set Lua scripts, so only the owner can extend or
free it.

Failure timeline:

1. Holder A takes the lease and works; a thread renews it every ttl/3.
2. A is paused (GC, SIGSTOP, network cut) longer than the TTL: the lease
   expires, B takes it and bumps the epoch in Postgres.
3. A wakes: its renewal fails (the key holds B's token), ``lost`` is set and
   the drain stops before its next request. If A was already past that
   check, its commit is refused by the fence. A's release cannot delete B's
   lease (compare-and-delete).

Waiting for a busy lease is how a standby stands by: a successor run, or a
whole second deployment, waits until the holder releases (a handoff) or dies
(the TTL runs out: failover within ``ttl_s``). It does not poll: a holder that
releases pushes a wake-up onto the source's *freed* list, and a standby blocks
on that list (``BLPOP``) for as long as the lease has left to live (``PTTL``),
at most ``block_s``; then it tries ``SET NX`` once. A handoff passes the lease
at once; a dead holder's lease is taken as it expires; a wake-up nobody was
waiting for (kept a TTL) costs a later standby one useless try. A standby costs
about two calls per ``block_s``, where polling every 0.1 s cost ten a second.
Short TTLs make failover quick; renewal every ttl/3 keeps a live holder's lease
through two missed renewals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.exceptions import LockError

from ..config import LEASE_TTL_S, LEASE_WAIT_S, is_valid_source_name

KEY_PREFIX = "event-ingest:lease:"
FREED_PREFIX = "event-ingest:lease-freed:"  # a list: one item pushed per release, for a standby to wake on

log = logging.getLogger(__name__)


class LeaseUnavailable(RuntimeError):
    """Redis could not be asked for the lease."""


# The longest a standby blocks before it looks again (and notices it was asked to stop). Kept under the
# Redis client's socket timeout, which a blocking call must not reach.
BLOCK_S = 2.0
# A lease with no TTL (set by hand) is looked at this often.
POLL_S = 0.1


class Lease:
    def __init__(
        self,
        client: redis.Redis,
        source: str,
        *,
        ttl_s: float = LEASE_TTL_S,
        wait_s: float = LEASE_WAIT_S,
        block_s: float = BLOCK_S,
    ) -> None:
        if not is_valid_source_name(source):
            raise ValueError(f"invalid source name {source!r}: not used as a Redis key")
        self.source = source
        self.key = KEY_PREFIX + source
        self.ttl_s = ttl_s
        self.wait_s = wait_s  # math.inf: stand by until the lease frees up or should_stop() says so
        self.freed_key = FREED_PREFIX + source
        # A blocking call must end before the client's socket timeout would cut it (and raise).
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self.block_s = min(block_s, socket_timeout * 0.75) if socket_timeout else block_s
        self._redis = client
        # thread_local=False: the renewal thread must see the token the drain took.
        # Non-blocking: the wait loop is ours, so a standby can be stopped while it waits.
        self._lock = client.lock(self.key, timeout=ttl_s, blocking=False, thread_local=False)
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def token(self) -> str | None:
        token = self._lock.local.token
        return token.decode() if isinstance(token, bytes) else token

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def acquire(self, should_stop: Callable[[], bool] | None = None) -> bool:
        """Take the lease, waiting up to ``wait_s`` for another holder; False if it stayed busy
        (or ``should_stop()`` turned true while waiting)."""
        started = time.monotonic()
        while True:
            try:
                if self._lock.acquire():
                    break
                waited = time.monotonic() - started
                if waited >= self.wait_s or (should_stop is not None and should_stop()):
                    return False
                self._wait_until_freed(self.wait_s - waited)
            except redis.RedisError as exc:
                raise LeaseUnavailable(
                    f"source {self.source!r}: cannot take the lease in Redis ({type(exc).__name__}: {exc})"
                ) from exc
        self._stop.clear()
        self._lost.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-renew-{self.source}", daemon=True)
        self._renewer.start()
        return True

    def _wait_until_freed(self, left_s: float) -> None:
        """Block until the holder releases (a wake-up on the freed list) or its lease would expire."""
        pttl_ms = self._redis.pttl(self.key)
        if pttl_ms == -2:
            return  # gone already: try at once
        expires_in = pttl_ms / 1000 + 0.005 if pttl_ms >= 0 else POLL_S
        block = min(expires_in, left_s, self.block_s)
        if block < 0.01:
            time.sleep(max(block, 0.0))
            return
        self._redis.blpop([self.freed_key], timeout=block)

    def _renew_loop(self) -> None:
        last_renewed = time.monotonic()
        while not self._stop.wait(self.ttl_s / 3):
            try:
                # reacquire() resets the TTL only if the key still holds our token.
                self._lock.reacquire()
                last_renewed = time.monotonic()
            except LockError:
                log.warning("source %r: lease lost (another consumer holds it now)", self.source)
                self._lost.set()
                return
            except redis.RedisError as exc:
                # Cannot prove we still hold it; keep trying until the TTL would
                # have run out, the fence covers us meanwhile.
                log.warning("source %r: lease renewal failed: %s", self.source, exc)
                if time.monotonic() - last_renewed >= self.ttl_s:
                    self._lost.set()
                    return

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        try:
            self._lock.release()
        except LockError:
            # Expired or taken by another holder: not ours to delete.
            self._lost.set()
            return
        except redis.RedisError as exc:
            log.warning("source %r: lease release failed (it will expire): %s", self.source, exc)
            return
        try:
            # Wake a standby: it takes the lease now instead of when it would have expired. Kept one TTL,
            # so wake-ups nobody waited for do not pile up.
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.rpush(self.freed_key, 1)
                pipe.pexpire(self.freed_key, max(int(self.ttl_s * 1000), 1))
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("source %r: standbys not woken (they take the lease within its TTL): %s", self.source, exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock.local.token is not None:
            self.release()
