"""The lease alone: owner-only release, expiry, renewal."""

from __future__ import annotations

import time

from event_ingest.core.lease import Lease


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
    time.sleep(0.7)  # a's lease expires
    b = Lease(redis_client, source_name, ttl_s=5, wait_s=0.5)
    assert b.acquire()
    a.release()  # stale holder tries to release: must not delete b's lease
    assert a.lost
    assert redis_client.get(b.key).decode() == b.token
    assert not b.lost
    b.release()
    assert redis_client.get(b.key) is None


def test_renewal_keeps_the_lease_past_its_ttl(redis_client, source_name):
    a = Lease(redis_client, source_name, ttl_s=0.6, wait_s=0.1)
    assert a.acquire()
    time.sleep(1.5)  # more than two TTLs; renewal every ttl/3
    assert not a.lost
    assert redis_client.get(a.key).decode() == a.token
    a.release()


def test_a_holder_notices_it_was_taken_over(redis_client, source_name):
    a = Lease(redis_client, source_name, ttl_s=0.6, wait_s=0.1)
    assert a.acquire()
    redis_client.set(a.key, "someone-else", px=5000)  # the lease now belongs to another token
    deadline = time.monotonic() + 2
    while not a.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a.lost
    a.release()
    assert redis_client.get(a.key) == b"someone-else"
