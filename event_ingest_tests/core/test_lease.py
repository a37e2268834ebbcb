"""The lease alone: owner-only release, expiry, renewal."""

from __future__ import annotations

import time

from event_ingest.core.lease import Lease

WAIT_S = 60.0  # only a hung test waits this long


def wait_for(condition, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_only_one_holder_at_a_time(redis_client, source_name):
    a = Lease(redis_client, source_name, ttl_s=5, wait_s=0.1)
    b = Lease(redis_client, source_name, ttl_s=5, wait_s=0.2)
    assert a.acquire()
    assert not b.acquire()
    a.release()
    assert b.acquire()
    b.release()


def test_release_by_a_non_owner_leaves_the_lease_alone(redis_client, source_name):
    a = Lease(redis_client, source_name, ttl_s=0.5, wait_s=0.1)
    assert a.acquire()
    a._stop.set()  # stop renewing: simulate a paused holder
    a._renewer.join()
    wait_for(lambda: redis_client.get(a.key) is None, "a's lease to expire")
    b = Lease(redis_client, source_name, ttl_s=5, wait_s=0.5)
    assert b.acquire()
    a.release()  # stale holder tries to release: must not delete b's lease
    assert a.lost
    assert redis_client.get(b.key).decode() == b.token
    assert not b.lost
    b.release()
    assert redis_client.get(b.key) is None


def test_renewal_keeps_the_lease_past_its_ttl(redis_client, source_name):
    """Watched in Redis: the key's TTL goes back up at each renewal (every ttl/3), and the key holds
    our token all along, for longer than one TTL. The TTL leaves a stalled machine a second's slack."""
    ttl_s = 1.5
    a = Lease(redis_client, source_name, ttl_s=ttl_s, wait_s=0.1)
    assert a.acquire()
    acquired_at = time.monotonic()
    renewals, last_pttl = 0, redis_client.pttl(a.key)

    def renewed_past_the_ttl() -> bool:
        nonlocal renewals, last_pttl
        assert redis_client.get(a.key).decode() == a.token, "the lease lapsed"
        pttl = redis_client.pttl(a.key)
        renewals += pttl > last_pttl
        last_pttl = pttl
        return renewals >= 4 and time.monotonic() - acquired_at > ttl_s

    wait_for(renewed_past_the_ttl, "four renewals, past one TTL")
    assert not a.lost
    a.release()


def test_a_holder_notices_it_was_taken_over(redis_client, source_name):
    a = Lease(redis_client, source_name, ttl_s=0.6, wait_s=0.1)
    assert a.acquire()
    redis_client.set(a.key, "someone-else", px=5000)  # the lease now belongs to another token
    wait_for(lambda: a.lost, "the holder to notice")
    a.release()
    assert redis_client.get(a.key) == b"someone-else"


def test_a_standby_waits_on_a_wake_up_not_a_poll_and_takes_over_at_release(redis_url, redis_client, source_name):
    """A standby blocks until the holder releases (or its lease would expire): watched in Redis (MONITOR),
    it tries SET NX on the busy lease a handful of times over seconds, not ten times a second, and takes
    the lease at the release, long before the holder's lease would have expired."""
    import threading

    from event_ingest.core import connect_redis

    holder = Lease(redis_client, source_name, ttl_s=30, wait_s=0.1)
    assert holder.acquire()
    watcher = connect_redis(redis_url)
    tries: list[float] = []
    with watcher.monitor() as monitor:
        standby_client = connect_redis(redis_url)
        standby = Lease(standby_client, source_name, ttl_s=30, wait_s=WAIT_S)
        took = []
        thread = threading.Thread(target=lambda: took.append(standby.acquire()))
        thread.start()
        watched_s = 3.0
        until = time.monotonic() + watched_s
        for command in monitor.listen():
            text = command.get("command", "")
            if text.startswith("SET ") and holder.key in text and " NX" in text:
                tries.append(time.monotonic())
            if time.monotonic() >= until:
                break
        released_at = time.monotonic()
        holder.release()
        thread.join(WAIT_S)
    assert took == [True] and redis_client.get(holder.key).decode() == standby.token
    assert redis_client.pttl(holder.key) > 20_000, "taken at the release, not at the holder's expiry"
    # Polling every 0.1 s would have tried ~30 times in 3 s; blocking tries once per block (2 s), plus the first.
    assert 1 <= len(tries) <= 4, tries
    assert time.monotonic() - released_at < 29, "the standby took over before the old lease could expire"
    standby.release()
    standby_client.close()
    watcher.close()
