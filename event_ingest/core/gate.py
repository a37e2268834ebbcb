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
3. Redis loses its memory, all or part of it, while a request may be in flight
   that the memory left no trace of. Redis keeps one more key, the *era*: a
   record of the memory the gate trusts - since when (``start``, Redis' clock),
   an ``id``, the server that holds it (``run_id``: new on every start of a
   Redis process, a promoted replica's own) and how many keys that server had
   evicted. Every acquire first runs a prelude (``gate_lua.ERA_PRELUDE``) that checks the
   era against the server, and every gate record carries the id of the era it
   was written in. Each loss, and what the prelude sees:

   a. Restart without persistence, ``FLUSHALL``, or an evicted era key: the era
      is missing. A new era begins now.
   b. Failover to a replica that had not yet received the last grants (managed
      Redis, Sentinel; replication is asynchronous), or a restart from an AOF or
      RDB that misses the last writes: the records are there, but old - an old
      ``next``, no hold - and the era names another ``run_id``. A new era
      begins now, and a record written before it is *distrusted*: read as if
      it were missing.
   c. A failover to a host whose clock runs ahead (or behind): the same as (b).
      The new server opens its era on its own clock and every record of the
      old server's clock is distrusted, so two clocks are never compared.
   d. Eviction (``maxmemory`` with a ``volatile-*`` or ``allkeys-*`` policy):
      gate records (they have a TTL) go while the era key (it has none) stays.
      Eviction removes whole keys, so the records that remain are intact; but a
      missing one proves nothing. The server's ``evicted_keys`` has grown since
      the era noted it: the era notes when keys were last *lost* (now).

   A request in flight at a loss was sent before the loss, so it is over by the
   time the prelude noticed + ``hold``. A source without a trusted record waits
   until then (era start + hold for a distrusted record, last loss + hold for a
   missing one) - once, right after the loss. A close never writes a next slot
   earlier than that: it leaves a lost record lost and an old one old, for the
   next acquire's prelude to read as such (``gate_lua.CLOSE_LUA``). A source without a record long after the last loss
   is simply new (or idle longer than the record's TTL, which exceeds two
   holds): its first request goes out at once.
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

Left open, as by every Redis-based lock: two primaries at once (a partitioned
old primary still taking writes from consumers that cannot reach the new one;
Redis' ``min-replicas-to-write`` narrows it), and the wall clock of one running
Redis stepped forward (``TIME`` is wall time: a hold or a slot ends early by the
step). ``CONFIG RESETSTAT`` zeroes ``evicted_keys``: any change of the count
opens a loss, so only a reset followed by exactly as many evictions as before
would go unseen.

The slot has one owner from grant to close: ``with gate.slot() as slot:``
(``SourceClient.fetch``) closes it on every way out, as an unanswered request
if the holder left without closing.

One call per request: a tailing drain asks again as soon as its page is
committed, so a close after a good response (``close(reserve=True)``) also
reserves the holder's next slot, ``interval`` from now, in the same script
(``gate_lua.CLOSE_AND_RESERVE_LUA``, which runs the era prelude like an acquire: a
reservation is written only into memory the gate trusts). The holder's next
``acquire()`` then waits for that slot without asking Redis again: it is
dated from when the close was asked for plus the wait, so the send-by check
and the request's deadline hold as for any grant, and a reservation used too
late is given back and asked for anew. A holder that stops (a handoff) gives
its unused reservation back (``give_back()``) before it lets go of the lease,
so a successor is granted the same slot; one that dies leaves it to lapse a
hold later, as a request in flight would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import redis
from redis.commands.core import AsyncScript, Script

from ..config import is_valid_source_name
from . import gate_lua

KEY_PREFIX = "event-ingest:gate:"
# The era: a hash describing the memory the gate trusts. Never expires. Fields: id (unique), start (µs, Redis'
# clock), server (run_id of the Redis that opened it), evicted (that server's evicted_keys when last looked),
# lost (µs: when keys were last found lost - the era's start, or an eviction noticed since). Earlier versions
# kept a bare start time under "event-ingest:gate-era"; a new name lets both run side by side during an upgrade.
ERA_KEY = "event-ingest:gate-era:2"

# Keep an idle gate's record for at least an hour (and always longer than two holds, so a
# record that expired cannot hide a request still in flight).
IDLE_TTL_MS = 3_600_000


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
        self.closed_at: float | None = None  # monotonic time of the close: the response had begun by then
        self.closed_redis_us: int | None = None  # the same on Redis' clock

    def send_by(self, fraction_of_interval: float = 0.5) -> float:
        """The latest monotonic time a request may still be sent under this slot.

        The reservation is held ``hold`` (timeout + interval) from the grant; counted from when the grant
        was *asked for* (never later than the grant), a request sent by then and answered or given up
        within ``timeout_s`` of the same moment is over before the reservation can lapse, so the next
        grant (at the close + interval, or at the lapse) is at least an interval after it reached the source.
        """
        return self.grant.asked_monotonic + self.gate.interval_us / 1_000_000 * fraction_of_interval

    def close(self, defer_s: float = 0.0, reserve: bool = False) -> float:
        """The response began (or the attempt is over): the next slot opens an interval (or ``defer_s``) from now;
        ``reserve``: and it is this holder's (a good response, the next request follows at once)."""
        self.closed = True
        wait_s = self.gate.close(defer_s, reserve=reserve)
        self.closed_at, self.closed_redis_us = self.gate.last_closed, self.gate.last_closed_redis_us
        return wait_s


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
        self._acquire = client.register_script(gate_lua.ACQUIRE_LUA)
        self._close = client.register_script(gate_lua.CLOSE_LUA)
        self._close_and_reserve = client.register_script(gate_lua.CLOSE_AND_RESERVE_LUA)
        self._give_back = client.register_script(gate_lua.GIVE_BACK_LUA)
        self._reserved: Grant | None = None  # our next slot, reserved by our last close: no need to ask for it

    @property
    def hold_s(self) -> float:
        return self.hold_us / 1_000_000

    def _call(self, script: AsyncScript | Script, args: list[int | str], keys: list[str]) -> list[int]:
        """Run one script; its reply is a list of integers (every gate script returns one)."""
        try:
            return cast(list[int], script(keys=keys, args=args))
        except redis.RedisError as exc:
            raise GateUnavailable(
                f"source {self.source!r}: spacing gate unavailable, not requesting ({type(exc).__name__}: {exc})"
            ) from exc

    def try_acquire(self) -> tuple[bool, int]:
        """One attempt: (True, grant time in µs on Redis' clock) or (False, µs to wait)."""
        granted, value = self._call(self._acquire, [self.hold_us, self.ttl_ms, self.token], [self.key, self.era_key])
        return bool(granted), int(value)

    def acquire(self, max_wait_s: float | None = None, should_stop: Callable[[], bool] | None = None) -> Grant | None:
        """Block until granted; None if ``max_wait_s`` ran out or ``should_stop()`` said so."""
        started = time.monotonic()
        # Our own close() said when the next slot opens: asking Redis before then only costs a round
        # trip (a third of a cycle's calls). Redis still decides; this only skips a useless question.
        # If that close reserved the slot for us, there is nothing to ask at all.
        while (early := self._not_before - time.monotonic()) > 0:
            if should_stop is not None and should_stop():
                return None
            if max_wait_s is not None and time.monotonic() - started + early > max_wait_s:
                return None
            time.sleep(min(early, self.interval_us / 1_000_000))
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            now = time.monotonic()
            if self._still_usable(reserved, now):
                return Grant(self.token, reserved.asked_monotonic, now, now - started, reserved.redis_time_us)
            self._give_back_reserved(reserved)  # too late to use it (we paused): give it back, ask anew
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
    def slot(
        self, max_wait_s: float | None = None, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[Slot | None]:
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

    def close(self, defer_s: float = 0.0, reserve: bool = False) -> float:
        """The response (or the timeout) came back: the next slot opens interval (or defer) from now. With
        ``reserve`` (and no ``defer_s``), that slot is reserved for this gate's holder (see the module doc)."""
        if reserve and not defer_s:
            asked = time.monotonic()
            wait_us, now_us, mine = self._call(
                self._close_and_reserve,
                [self.hold_us, self.ttl_ms, self.token, self.interval_us],
                [self.key, self.era_key],
            )
        else:
            asked = None
            wait_us, now_us = self._call(
                self._close, [self.token, self.interval_us, int(defer_s * 1_000_000), self.ttl_ms], [self.key]
            )
            mine = 0
        wait_s = int(wait_us) / 1_000_000
        self.last_closed = time.monotonic()
        self.last_closed_redis_us = int(now_us)
        # Never before the slot: counted from when the answer was read, the latest the close can have run.
        self._not_before = self.last_closed + wait_s
        if mine and asked is not None:
            # Dated from when the close was asked for (the earliest it can have run) plus the wait: the send-by
            # check and the request's deadline count from there, as for a grant read at once.
            self._reserved = Grant(self.token, asked + wait_s, self.last_closed, 0.0, int(now_us) + int(wait_us))
        return wait_s

    def _still_usable(self, reserved: Grant, now: float) -> bool:
        """A reserved slot is used within half an interval of its start, as any grant (``Slot.send_by``)."""
        return now <= reserved.asked_monotonic + self.interval_us / 2_000_000

    def give_back(self) -> None:
        """An unused reservation goes back (this holder stops): a successor is granted the same slot."""
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            self._give_back_reserved(reserved)

    def _give_back_reserved(self, reserved: Grant) -> None:
        self._call(self._give_back, [self.token], [self.key])
