"""The spacing gate alone, against real Redis and real OS processes."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time

import pytest
import redis

from event_ingest.core import connect_redis
from event_ingest.core.gate import Gate, GateUnavailable

INTERVAL = 0.2
# Only a hung test waits this long: every wait below is for a condition, and a busy machine that
# stalls for a second must not turn a correct gate into a failure.
WAIT_S = 60.0


def _hammer(redis_url: str, source: str, token: str, count: int, out) -> None:
    """Take ``count`` grants (however long a busy machine makes that), each with a short "request"."""
    client = connect_redis(redis_url)
    gate = Gate(client, source, interval_s=INTERVAL, hold_s=1.0, token=token)
    grants = []
    give_up_at = time.monotonic() + WAIT_S
    while len(grants) < count and time.monotonic() < give_up_at:
        grant = gate.acquire(max_wait_s=WAIT_S)
        if grant is None:
            continue
        time.sleep(random.uniform(0, 0.01))  # the "request"
        redis_now = client.time()
        grants.append((grant.redis_time_us, redis_now[0] * 1_000_000 + redis_now[1]))
        gate.close()
    out.put(grants)


def _warm(client, source, token="warm") -> Gate:
    """Pass the cold-start hold once so tests measure steady state."""
    gate = Gate(client, source, interval_s=INTERVAL, hold_s=0.3, token=token)
    assert gate.acquire(max_wait_s=WAIT_S) is not None
    gate.close()
    return gate


def test_two_processes_never_get_grants_within_the_interval(redis_url, redis_client, source_name):
    _warm(redis_client, source_name)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(redis_url, source_name, f"p{i}", 6, out)) for i in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=2 * WAIT_S) for _ in procs]
    for p in procs:
        p.join(timeout=WAIT_S)
    assert [len(r) for r in results] == [6, 6], "each process must have been granted its slots"
    grants = sorted(g for r in results for g in r)
    for (grant_a, closed_a), (grant_b, _) in zip(grants, grants[1:]):
        # Next grant is at least one interval after the previous slot was closed, by Redis' clock.
        assert grant_b - closed_a >= INTERVAL * 1_000_000, (grant_a, closed_a, grant_b)
        assert grant_b - grant_a >= INTERVAL * 1_000_000


def test_retry_after_pushes_every_consumer_back(redis_client, source_name):
    first = _warm(redis_client, source_name, "a")
    assert first.acquire(max_wait_s=WAIT_S) is not None
    t0 = redis_client.time()
    first.close(defer_s=1.0)
    other = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=0.3, token="b")
    grant = other.acquire(max_wait_s=WAIT_S)
    assert grant is not None
    assert grant.redis_time_us - (t0[0] * 1_000_000 + t0[1]) >= 1_000_000


def test_a_dead_holder_blocks_until_its_hold_expires(redis_client, source_name):
    _warm(redis_client, source_name)
    dead = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=0.8, token="dead")
    held = dead.acquire(max_wait_s=WAIT_S)
    assert held is not None  # and never closed
    other = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=0.8, token="alive")
    grant = other.acquire(max_wait_s=WAIT_S)
    assert grant is not None
    # Judged on Redis' clock, whatever the machine's pauses: not granted before the dead holder's hold ran out.
    assert grant.redis_time_us - held.redis_time_us >= 800_000


def test_lost_state_waits_out_a_full_hold(redis_client, source_name):
    """After FLUSHALL/restart nobody knows what is in flight: the first grant waits one hold.

    The hold is long (nothing here waits it out): a machine that stalls between two calls must not
    see the hold pass in between."""
    era_key = f"test-era:{source_name}"
    hold_s = 30.0
    gate = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=hold_s, token="x", era_key=era_key)
    granted, _ = gate.try_acquire()  # a fresh era: even this first call waits (nothing known about Redis)
    assert not granted
    redis_client.set(era_key, 0)  # an era long past: the memory has been whole for ages
    redis_client.delete(gate.key)
    granted, _ = gate.try_acquire()
    assert granted
    gate.close()
    redis_client.delete(gate.key, era_key)  # what a FLUSHALL does to this gate
    granted, wait_us = gate.try_acquire()
    assert not granted and wait_us == hold_s * 1_000_000  # the whole hold, on Redis' clock
    other = Gate(redis_client, source_name + "_b", interval_s=INTERVAL, hold_s=hold_s, token="y", era_key=era_key)
    granted, wait_us = other.try_acquire()  # another source without a record right after the loss: waits too
    assert not granted and 0 < wait_us <= hold_s * 1_000_000  # until the same era + hold
    redis_client.delete(other.key, era_key)


def test_a_new_source_is_granted_at_once(redis_client, source_name):
    """A source with no record in a Redis whose memory is whole (era older than a hold) is new: no wait."""
    era_key = f"test-era:{source_name}"
    t = redis_client.time()
    redis_client.set(era_key, (t[0] - 30) * 1_000_000 + t[1])  # whole for 30 s, more than one hold
    gate = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=10.2, token="x", era_key=era_key)
    granted, _ = gate.try_acquire()
    assert granted
    gate.close()
    granted, wait_us = gate.try_acquire()  # and the spacing holds from the first request on
    assert not granted and 0 < wait_us <= INTERVAL * 1_000_000
    redis_client.delete(gate.key, era_key)


def test_unreachable_redis_grants_nothing(source_name):
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    gate = Gate(dead, source_name, interval_s=INTERVAL, hold_s=1, token="x")
    with pytest.raises(GateUnavailable, match=source_name):
        gate.acquire(max_wait_s=1)


def test_a_slot_that_went_stale_before_sending_is_given_back_unused(redis_url, redis_client, source_name, make_mock):
    """A consumer paused after Redis granted its slot but before it read the answer (SIGSTOP, a frozen VM)
    must count the pause: meanwhile its reservation lapsed and another consumer took the next slot and sent.

    The pause is real to the client: its Redis replies come through a forwarder that holds the grant's
    answer for longer than the hold. The other consumer's request must be the only one at the source."""
    from urllib.parse import urlsplit

    from event_ingest.core.client import Kind, SourceClient
    from event_ingest_tests.conftest import source_config
    from event_ingest_tests.netproxy import DelayingProxy

    mock = make_mock(backlog=5)
    source = source_config(source_name, mock.url, timeout_s=1.0)
    hold_s = source.timeout_s + INTERVAL
    _warm(redis_client, source_name)  # also loads the scripts: the paused client's grant is one round trip
    parts = urlsplit(redis_url)
    proxy = DelayingProxy(parts.hostname, parts.port)
    slow_redis = connect_redis(f"redis://127.0.0.1:{proxy.port}{parts.path}")
    paused = SourceClient(source, Gate(slow_redis, source_name, interval_s=INTERVAL, hold_s=hold_s, token="paused"))
    other = SourceClient(source, Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=hold_s, token="other"))
    outcomes = []
    try:
        time.sleep(INTERVAL * 1.5)  # past the warm-up's slot: the held answer is the grant itself, not a "wait"
        proxy.delay_next_reply(hold_s + 0.3)
        worker = threading.Thread(target=lambda: outcomes.append(paused.fetch(0, max_wait_s=WAIT_S)))
        worker.start()
        key = paused.gate.key
        give_up = time.monotonic() + WAIT_S
        while redis_client.hget(key, "holder") != b"paused":  # granted in Redis; the answer is still held
            assert time.monotonic() < give_up, "the paused consumer was never granted"
            time.sleep(0.005)
        taken = other.fetch(0, max_wait_s=WAIT_S)  # after the reservation lapsed
        worker.join(WAIT_S)
        [late] = outcomes
        assert taken is not None and taken.kind is Kind.OK and taken.sent
        assert late is not None and late.kind is Kind.RETRY and not late.sent and "stale" in late.reason, late
        seen = mock.stats()
        assert seen["requests"] == 1 and paused.requests == 0, seen
        # Given back, not left to lapse: no reservation left in Redis.
        assert redis_client.hmget(key, "holder", "hold_until") == [None, None]
        assert paused.fetch(0, max_wait_s=WAIT_S).kind is Kind.OK  # asked again, it is served
        assert mock.stats()["gaps_under_200ms"] == 0
    finally:
        paused.close()
        other.close()
        slow_redis.close()
        proxy.close()
