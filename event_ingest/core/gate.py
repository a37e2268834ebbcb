"""Spacing gate: no two requests to one source less than ``min_interval`` apart.

The rule is judged at the source, on the arrival times of requests, counting
every process on every server. So the gate:

* lives in Redis and is changed only by atomic Lua scripts (no GET-then-SET race);
* reads time only from Redis' own clock (``redis.call('TIME')``): servers'
  clocks disagree, Redis' is the one clock every consumer shares;
* does not space *grants*; it spaces from the moment the previous *response*
  arrived. A slot granted at t and sent 15 ms late (busy CPU, GC pause) would
  make the next gap 15 ms short if grants were 200 ms apart. Instead a grant is
  a reservation held while the request is in flight; ``close()`` runs when the
  response (or the timeout) comes back and sets ``next = redis_now + interval``.
  The request cannot have reached the source later than its response came
  back, so the next request is at least ``interval`` after it at the source.

Failure timeline it defends against:

1. A holder dies mid-request: its reservation expires ``hold`` after the grant
   (request timeout + interval), then the slot opens again.
2. ``Retry-After`` from the source: ``close(defer_s=...)`` pushes the same key
   forward, so every process on every server backs off together.
3. Redis loses its state (restart without persistence, ``FLUSHALL``): a
   request may be in flight that nobody knows of. Redis keeps one more key,
   the *era*: the moment (Redis clock) since which its memory is known to be
   whole. The first caller that finds the era missing sets it to now; every
   request in flight when the state was lost had been sent before that
   moment, so it is over by ``era + hold``. A source without a record waits
   until then - once, right after the loss, never a short gap. A source
   without a record in an era older than one hold is simply new (or has been
   idle longer than the record's TTL, which always exceeds a hold): its
   first request goes out at once.
4. Redis is unreachable: no slot can be proven safe, so none is granted; the
   caller gets :class:`GateUnavailable` and stops requesting rather than guess.
5. The holder pauses (SIGSTOP, a frozen VM, a long GC) after Redis granted it a
   slot, perhaps before it even read the answer, for longer than the hold: its
   reservation lapses and another consumer sends. A grant is therefore dated
   from when it was *asked for* (``Grant.asked_monotonic``), never from when
   its answer was read, and a request goes out only within half an interval of
   that moment, checked where its first bytes are written (``http.py``); a
   later one is given back unsent. Everything of a request then ends within
   ``timeout_s`` of the same moment, so it is over before the hold can lapse.

The slot has one owner from grant to close: ``with gate.slot() as slot:``
(``SourceClient.fetch``) closes it on every way out, as an unanswered request
if the holder left without closing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from ..config import is_valid_source_name

KEY_PREFIX = "event-ingest:gate:"
# Since when (µs, Redis' clock) this Redis' memory is known to be whole; never expires.
ERA_KEY = "event-ingest:gate-era"

# Keep an idle gate's record for at least an hour (and always longer than two holds, so a
# record that expired cannot hide a request still in flight).
IDLE_TTL_MS = 3_600_000

# KEYS[1] = gate hash for one source (fields: next, holder, hold_until; microseconds on Redis' clock)
# KEYS[2] = the era key
# ARGV[1] = token of the caller
# ARGV[2] = hold_us: how long the reservation lasts if never closed (timeout + interval)
# ARGV[3] = idle TTL of the key in ms
# Returns {1, now_us} when granted (the grant time on Redis' clock), {0, wait_us} when the caller must wait.
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local hold = tonumber(ARGV[2])
local next_at = tonumber(redis.call('HGET', KEYS[1], 'next'))
if not next_at then
  -- No record. Either the source is new (or idle past the record's TTL), or Redis lost
  -- its memory (restart, FLUSHALL) while a request nobody knows of may be in flight.
  local era = tonumber(redis.call('GET', KEYS[2]))
  if not era then
    -- The memory was lost (or this Redis was never used): it is whole from now on.
    era = now
    redis.call('SET', KEYS[2], era)
  end
  -- Anything in flight at the loss was sent before the era began and is over by era + hold.
  next_at = era + hold
  redis.call('HSET', KEYS[1], 'next', next_at)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local hold_until = tonumber(redis.call('HGET', KEYS[1], 'hold_until'))
if hold_until and hold_until > now then
  -- Someone's request is in flight; its close() will set the next slot.
  return {0, hold_until - now}
end
if now < next_at then
  return {0, next_at - now}
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'hold_until', now + hold, 'granted_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, now}
"""

# KEYS[1] = gate hash
# ARGV[1] = token of the caller (its reservation is cleared only if it still owns it)
# ARGV[2] = interval_us
# ARGV[3] = defer_us (Retry-After; 0 if none)
# ARGV[4] = idle TTL in ms
# Returns {microseconds until the next slot opens, now on Redis' clock}.
CLOSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_at = now + math.max(tonumber(ARGV[2]), tonumber(ARGV[3]))
local current = tonumber(redis.call('HGET', KEYS[1], 'next'))
-- Only ever move the slot later: a response arriving now proves its request
-- arrived earlier, whoever owned the reservation.
if current and current > next_at then next_at = current end
redis.call('HSET', KEYS[1], 'next', next_at)
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'holder', 'hold_until')
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {next_at - now, now}
"""


class GateUnavailable(RuntimeError):
    """Redis cannot be asked, so no request may be sent."""


@dataclass(frozen=True)
class Grant:
    token: str
    asked_monotonic: float  # when the question that got the grant was sent: the grant is no older than this
    granted_monotonic: float  # when the answer was read (later, by a round trip or by a pause of this process)
    waited_s: float
    redis_time_us: int  # the grant on Redis' clock


class Slot:
    """One granted slot: the reservation a request is sent under. ``close()`` it when the response begins
    (or the request failed); :meth:`Gate.slot` closes it, as unanswered, if the holder left without."""

    def __init__(self, gate: Gate, grant: Grant) -> None:
        self.gate = gate
        self.grant = grant
        self.closed = False

    def send_by(self, fraction_of_interval: float = 0.5) -> float:
        """The latest monotonic time a request may still be sent under this slot.

        The reservation is held ``hold`` (timeout + interval) from the grant; counted from when the grant
        was *asked for* (never later than the grant), a request sent by then and answered or given up
        within ``timeout_s`` of the same moment is over before the reservation can lapse, so the next
        grant (at the close + interval, or at the lapse) is at least an interval after it reached the source.
        """
        return self.grant.asked_monotonic + self.gate.interval_us / 1_000_000 * fraction_of_interval

    def close(self, defer_s: float = 0.0) -> float:
        """The response began (or the attempt is over): the next slot opens an interval (or ``defer_s``) from now."""
        self.closed = True
        return self.gate.close(defer_s)


class Gate:
    """The spacing gate for one source.

    ``with gate.slot() as slot:`` takes a slot (blocking until one is granted, or ``max_wait_s``), and
    ``slot.close()`` must follow every request that was sent, with the ``Retry-After`` seconds if the
    source asked for a pause. ``acquire()``/``close()`` are the same steps, for tests and tools.
    """

    def __init__(
        self,
        client: redis.Redis,
        source: str,
        *,
        interval_s: float,
        hold_s: float,
        token: str,
        era_key: str = ERA_KEY,
    ) -> None:
        if not is_valid_source_name(source):
            raise ValueError(f"invalid source name {source!r}: not used as a Redis key")
        self.key = KEY_PREFIX + source
        self.source = source
        self.interval_us = int(interval_s * 1_000_000)
        self.hold_us = int(hold_s * 1_000_000)
        self.ttl_ms = max(IDLE_TTL_MS, 2 * self.hold_us // 1000)
        self.era_key = era_key  # one per Redis; tests give their own to play a loss without disturbing others
        self.token = token
        self._redis = client
        self._not_before = 0.0  # monotonic; no slot before this, as our last close() was told
        self.last_closed: float | None = None  # monotonic time of our last close(): a response had begun
        self.last_closed_redis_us: int | None = None  # the same on Redis' clock
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._close = client.register_script(CLOSE_LUA)

    @property
    def hold_s(self) -> float:
        return self.hold_us / 1_000_000

    def _call(self, script, args: list, keys: list[str] | None = None) -> object:
        try:
            return script(keys=keys or [self.key], args=args)
        except redis.RedisError as exc:
            raise GateUnavailable(
                f"source {self.source!r}: spacing gate unavailable, not requesting ({type(exc).__name__}: {exc})"
            ) from exc

    def try_acquire(self) -> tuple[bool, int]:
        """One attempt: (True, grant time in µs on Redis' clock) or (False, µs to wait)."""
        granted, value = self._call(
            self._acquire, [self.token, self.hold_us, self.ttl_ms], keys=[self.key, self.era_key]
        )
        return bool(granted), int(value)

    def acquire(self, max_wait_s: float | None = None, should_stop=None) -> Grant | None:
        """Block until granted; None if ``max_wait_s`` ran out or ``should_stop()`` said so."""
        started = time.monotonic()
        # Our own close() said when the next slot opens: asking Redis before then only costs a round
        # trip (a third of a cycle's calls). Redis still decides; this only skips a useless question.
        while (early := self._not_before - time.monotonic()) > 0:
            if should_stop is not None and should_stop():
                return None
            if max_wait_s is not None and time.monotonic() - started + early > max_wait_s:
                return None
            time.sleep(min(early, self.interval_us / 1_000_000))
        while True:
            # Read the clock *before* asking: a process paused after Redis granted but before it read the
            # answer (SIGSTOP, a frozen VM, a long GC) must see its grant as old as the pause, not as new.
            asked = time.monotonic()
            granted, value = self.try_acquire()
            now = time.monotonic()
            if granted:
                return Grant(self.token, asked, now, now - started, value)
            wait_s = value / 1_000_000
            if should_stop is not None and should_stop():
                return None
            if max_wait_s is not None and now - started + wait_s > max_wait_s:
                return None
            # Sleep to just past the slot, but poll a holder's reservation more
            # often: its close() usually comes long before the hold expires.
            time.sleep(min(max(wait_s, 0.0005), self.interval_us / 1_000_000))

    @contextmanager
    def slot(self, max_wait_s: float | None = None, should_stop=None) -> Iterator[Slot | None]:
        """A granted slot (None if none came within ``max_wait_s`` or ``should_stop()`` said so).

        Whatever ends the block, the slot is closed: a holder that leaves without closing (an exception
        from anywhere) closes it as an unanswered request, which waits one more request's life.
        """
        grant = self.acquire(max_wait_s, should_stop)
        if grant is None:
            yield None
            return
        slot = Slot(self, grant)
        try:
            yield slot
        finally:
            if not slot.closed:
                slot.close(defer_s=self.hold_s)

    def close(self, defer_s: float = 0.0) -> float:
        """The response (or the timeout) came back: the next slot opens interval (or defer) from now."""
        wait_us, now_us = self._call(self._close, [self.token, self.interval_us, int(defer_s * 1_000_000), self.ttl_ms])
        self.last_closed = time.monotonic()
        self.last_closed_redis_us = int(now_us)
        self._not_before = self.last_closed + int(wait_us) / 1_000_000
        return int(wait_us) / 1_000_000
