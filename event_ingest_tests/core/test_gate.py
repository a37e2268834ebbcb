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
from event_ingest.core.gate_lua import backdate_era

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
    backdate_era(redis_client, era_key, 3600)  # an era long past: the memory has been whole for an hour
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
    backdate_era(redis_client, era_key, 30)  # whole for 30 s, more than one hold
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
        # Given back, not left to lapse: the paused one holds no reservation (the other, served, reserved
        # its next slot; it gives that back as it stops).
        assert redis_client.hget(key, "holder") == b"other"
        other.close()
        assert redis_client.hmget(key, "holder", "hold_until") == [None, None]
        assert paused.fetch(0, max_wait_s=WAIT_S).kind is Kind.OK  # asked again, it is served
        assert mock.stats()["gaps_under_200ms"] == 0
    finally:
        paused.close()
        other.close()
        slow_redis.close()
        proxy.close()


# -- partial loss: a memory that kept old records -------------------------------------------------------------

LONG_HOLD_S = 30.0  # nothing below waits it out; a stalled machine cannot see it pass between two calls


def _wait_until_redis_time(client: redis.Redis, at_us: int) -> None:
    give_up = time.monotonic() + WAIT_S
    while (now := client.time())[0] * 1_000_000 + now[1] <= at_us:
        assert time.monotonic() < give_up, "Redis' clock did not move"
        time.sleep(0.01)


def _closed_record(client: redis.Redis, gate: Gate) -> None:
    """A record as a quiet spell leaves it: a request granted and closed, its next slot already past."""
    assert gate.acquire(max_wait_s=WAIT_S) is not None
    gate.close()
    _wait_until_redis_time(client, int(client.hget(gate.key, "next")))


@pytest.fixture
def embedded_dir(tmp_path):
    from event_ingest.devstack.embedded import EmbeddedRedis

    started = []

    def start(name: str, *args: str) -> EmbeddedRedis:
        server = EmbeddedRedis(tmp_path / name, extra_args=list(args))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_a_promoted_replica_that_missed_a_grant_waits_a_hold(tmp_path, embedded_dir, source_name):
    """A replica held behind when a grant lands on its primary; the primary dies, the replica is promoted.

    The replica's record of the source shows an old next slot and no reservation, though the request granted
    on the primary may be in flight: read as the whole truth, it would be granted at once."""
    from event_ingest.chaos.redis_pair import RedisPair

    pair = RedisPair(tmp_path, embedded_dir("primary"))
    try:
        primary = connect_redis(pair.url)
        gate = Gate(primary, source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="a")
        backdate_era(primary, gate.era_key, 3600)
        _closed_record(primary, gate)
        pair.wait_in_sync()
        pair.hold_link()
        in_flight = gate.acquire(max_wait_s=WAIT_S)  # lands on the primary only
        assert in_flight is not None
        pair.kill_primary()  # what the link held is gone with it
        on_replica = connect_redis(f"redis://127.0.0.1:{pair.replica.port}/0")
        assert on_replica.hget(gate.key, "holder") is None  # the replica never saw the grant
        on_replica.close()
        pair.promote()
        after = Gate(connect_redis(pair.url), source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="b")
        granted, wait_us = after.try_acquire()
        assert not granted and wait_us == LONG_HOLD_S * 1_000_000  # a new era on the promoted server: one hold
    finally:
        pair.stop()


def test_a_restart_from_an_old_snapshot_waits_a_hold(embedded_dir, source_name):
    """Redis restarted from an RDB saved before the last grant: the record it restores shows no reservation."""
    server = embedded_dir("redis")
    client = connect_redis(server.url)
    gate = Gate(client, source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="a")
    backdate_era(client, gate.era_key, 3600)
    _closed_record(client, gate)
    client.save()  # the snapshot
    assert gate.acquire(max_wait_s=WAIT_S) is not None  # a grant after it: in flight
    try:
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass
    client.close()
    server.stop()
    server.start()  # loads the snapshot
    restored = connect_redis(server.url)
    assert restored.hget(gate.key, "next") is not None and restored.hget(gate.key, "holder") is None
    after = Gate(restored, source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="b")
    granted, wait_us = after.try_acquire()
    assert not granted and wait_us == LONG_HOLD_S * 1_000_000
    restored.close()


def test_an_evicted_record_waits_a_hold(embedded_dir, source_name):
    """Eviction under a memory limit takes a gate record with its reservation; the era key (no TTL) stays."""
    server = embedded_dir("redis", "--maxmemory-policy", "volatile-lru")
    client = connect_redis(server.url)
    gate = Gate(client, source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="a")
    backdate_era(client, gate.era_key, 3600)
    assert gate.acquire(max_wait_s=WAIT_S) is not None  # in flight
    other = Gate(client, source_name + "_b", interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="c")
    assert other.acquire(max_wait_s=WAIT_S) is not None  # in flight too, and its record will stay
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 200_000)
    ballast = 0
    while client.exists(gate.key):
        client.set(f"ballast:{ballast}", b"x" * 20_000, px=600_000)
        ballast += 1
        client.persist(other.key)  # not evictable (no TTL): a record that stays must keep its reservation
        assert ballast < 10_000, "the record was never evicted"
    client.config_set("maxmemory", 0)
    assert client.exists(gate.era_key)
    gate.close()  # the response to the request in flight: a close leaves a lost record lost
    assert not client.exists(gate.key)
    after = Gate(client, source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="b")
    granted, wait_us = after.try_acquire()
    assert not granted and wait_us == LONG_HOLD_S * 1_000_000  # keys were lost now: one hold from now
    granted, wait_us = Gate(
        client, source_name + "_b", interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="d"
    ).try_acquire()
    assert not granted and wait_us < LONG_HOLD_S * 1_000_000  # intact: its own reservation, not a new hold
    client.close()


def test_a_record_from_an_older_era_is_distrusted_and_a_close_keeps_the_wait(redis_client, source_name):
    """An era written by another server (what a promoted replica or a restart finds): the records of that
    era are read as missing, whatever the close of a request granted in it wrote; later closes keep the wait."""
    era_key = f"test-era:{source_name}"
    gate = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="a", era_key=era_key)
    backdate_era(redis_client, era_key, 3600)
    assert gate.acquire(max_wait_s=WAIT_S) is not None
    redis_client.hset(era_key, "server", "0" * 40)  # the era of another server
    gate.close()  # the holder's response came back on the new server: an interval, in an old record
    other = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="b", era_key=era_key)
    granted, wait_us = other.try_acquire()
    assert not granted and wait_us == LONG_HOLD_S * 1_000_000  # a new era, opened by this acquire: one hold
    era_start = int(redis_client.hget(era_key, "start"))
    gate.close()  # a close in the new era cannot open the slot earlier than its wait
    assert int(redis_client.hget(gate.key, "next")) == era_start + LONG_HOLD_S * 1_000_000
    redis_client.delete(gate.key, era_key)


def test_an_era_of_another_shape_opens_a_new_one(redis_client, source_name):
    """An era key holding something else (an earlier version's bare start time) vouches for nothing."""
    era_key = f"test-era:{source_name}"
    t = redis_client.time()
    redis_client.set(era_key, (t[0] - 3600) * 1_000_000 + t[1])
    gate = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="a", era_key=era_key)
    granted, wait_us = gate.try_acquire()
    assert not granted and wait_us == LONG_HOLD_S * 1_000_000
    assert redis_client.type(era_key) == b"hash"
    redis_client.delete(gate.key, era_key)


def test_a_record_of_an_earlier_version_keeps_its_reservation(redis_client, source_name):
    """While an earlier version runs beside this one, its records (no era field) are read as it reads them."""
    era_key = f"test-era:{source_name}"
    backdate_era(redis_client, era_key, 3600)
    t = redis_client.time()
    now_us = t[0] * 1_000_000 + t[1]
    gate = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=LONG_HOLD_S, token="a", era_key=era_key)
    redis_client.hset(gate.key, mapping={"next": now_us, "holder": "old", "hold_until": now_us + 20_000_000})
    granted, wait_us = gate.try_acquire()
    assert not granted and 0 < wait_us <= 20_000_000  # its reservation, in flight
    redis_client.delete(gate.key, era_key)


def test_a_reserved_slot_used_late_is_given_back_and_asked_for_anew(redis_client, source_name):
    """A close after a good response reserves the holder's next slot; a holder that comes for it after its send-by
    time (it paused) must not use it: it gives it back and is granted a fresh slot by Redis."""
    _warm(redis_client, source_name)
    gate = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=1.2, token="late")
    assert gate.acquire(max_wait_s=WAIT_S) is not None
    gate.close(reserve=True)
    reserved_at = int(redis_client.hget(gate.key, "granted_at"))
    assert redis_client.hget(gate.key, "holder") == b"late"
    time.sleep(INTERVAL * 2)  # the "pause": past the reserved slot's send-by time
    paused_until = time.monotonic()
    grant = gate.acquire(max_wait_s=WAIT_S)
    assert grant is not None and grant.asked_monotonic >= paused_until, "a fresh grant, asked for after the pause"
    assert grant.redis_time_us > reserved_at + INTERVAL * 1_000_000 / 2
    gate.close()


def test_a_reserved_slot_is_used_at_once_and_given_back_when_the_holder_stops(redis_client, source_name):
    """Used in time, a reserved slot is granted without asking Redis; a holder that stops gives it back, and the
    next one is granted that same slot instead of waiting for it to lapse (a hold)."""
    _warm(redis_client, source_name)
    a = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=30.0, token="a")
    assert a.acquire(max_wait_s=WAIT_S) is not None
    a.close(reserve=True)
    reserved_at = int(redis_client.hget(a.key, "granted_at"))
    grant = a.acquire(max_wait_s=WAIT_S)
    assert grant is not None and grant.redis_time_us == reserved_at  # the reservation, not a new question
    a.close(reserve=True)
    a.give_back()
    b = Gate(redis_client, source_name, interval_s=INTERVAL, hold_s=30.0, token="b")
    taken = b.acquire(max_wait_s=5.0)  # a lapse would take the 30 s hold
    assert taken is not None
    b.close()
