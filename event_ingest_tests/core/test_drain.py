"""The whole drain against real Postgres, real Redis and real mock sources over HTTP."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from event_ingest.core import DrainObserver, DrainOptions, Store, connect_redis, drain
from event_ingest.core.lease import KEY_PREFIX as LEASE_PREFIX
from event_ingest.core.progress import DrainStatus
from event_ingest_tests.conftest import source_config


def run_drain(source, database_url, redis_url, **options):
    with Store(database_url) as store:
        store.apply_schema([source.name])
        return drain(source, store=store, redis_client=connect_redis(redis_url), options=DrainOptions(**options))


def test_drains_a_backlog_through_a_failing_source(make_mock, database_url, redis_url, source_name, store):
    mock = make_mock(backlog=2500, error_rate=0.3, random_seed=7)
    source = source_config(source_name, mock.url, page_size=500)
    stats = run_drain(source, database_url, redis_url)
    assert stats.status == DrainStatus.CAUGHT_UP, stats.summary()
    assert store.event_ids(source_name) == list(range(1, 2501))
    assert store.source_status(source_name).cursor == 2500
    served = mock.stats()
    assert served["statuses"].get("500", 0) > 0  # the source failed some requests: retries went through the gate
    assert served["gaps_under_200ms"] == 0 and served["min_gap_ms"] >= 200


def test_a_second_drain_resumes_from_the_cursor(make_mock, database_url, redis_url, source_name, store):
    mock = make_mock(backlog=300)
    source = source_config(source_name, mock.url, page_size=100)
    first = run_drain(source, database_url, redis_url)
    mock.control({"next": [{"kind": "events", "events": [{"id": 301, "payload": "late"}], "record": True}]})
    second = run_drain(source, database_url, redis_url)
    assert (first.cursor_after, second.cursor_before, second.cursor_after) == (300, 300, 301)
    assert second.epoch == first.epoch + 1
    assert store.event_ids(source_name) == list(range(1, 302))


def test_the_time_budget_ends_a_drain_of_an_endless_source(make_mock, database_url, redis_url, source_name, store):
    mock = make_mock(seed_batch=3)  # the original system's mocks: never caught up
    stats = run_drain(source_config(source_name, mock.url), database_url, redis_url, max_seconds=2)
    assert stats.status == DrainStatus.BUDGET_SPENT
    # Every page served was stored, up to the cursor (a page in flight when the budget ran out is not).
    cursor = store.source_status(source_name).cursor
    stored = store.event_ids(source_name)
    assert cursor > 0 and stored == list(range(1, cursor + 1))
    assert [i for i in mock.stats(include_ids=True)["served_ids"] if i <= cursor] == stored


def test_a_busy_lease_ends_the_drain_cleanly(make_mock, database_url, redis_url, redis_client, source_name, store):
    from event_ingest.core import Lease

    mock = make_mock(backlog=10)
    holder = Lease(redis_client, source_name, ttl_s=10)
    assert holder.acquire()
    try:
        stats = run_drain(source_config(source_name, mock.url), database_url, redis_url, lease_wait_s=0.3)
    finally:
        holder.release()
    assert stats.status == DrainStatus.LEASE_BUSY and stats.ok
    assert mock.stats()["requests"] == 0  # judged at the source: nothing was asked
    assert store.event_ids(source_name) == []


def test_a_hook_taking_over_mid_drain_gets_the_commit_fenced(make_mock, database_url, redis_url, source_name, store):
    """A holder whose source was taken over between fetch and commit stores nothing of that page."""
    mock = make_mock(backlog=200)
    source = source_config(source_name, mock.url, page_size=50)

    class TakeOver(DrainObserver):
        def fetched(self, progress, page):
            if progress.counts.pages == 2:  # after two committed pages, someone else bumps the epoch
                with Store(database_url) as other:
                    other.begin_epoch(source_name)

    with Store(database_url) as s:
        s.apply_schema([source_name])
        stats = drain(source, store=s, redis_client=connect_redis(redis_url), options=DrainOptions(observer=TakeOver()))
    assert stats.status == DrainStatus.FENCED and "fence" in stats.error
    assert store.event_ids(source_name) == list(range(1, 101))  # pages 1-2 only; page 3 rolled back
    assert store.source_status(source_name).fenced_commits == 1


def _consumer(database_url: str, redis_url: str, sources: list, seconds: float, out) -> None:
    """One independent consumer process: drain every source in turn until time is up."""
    redis_client = connect_redis(redis_url)
    ends: dict[str, int] = {}
    with Store(database_url) as store:
        store.apply_schema(s.name for s in sources)
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            for source in sources:
                stats = drain(
                    source,
                    store=store,
                    redis_client=redis_client,
                    options=DrainOptions(max_seconds=1.5, lease_wait_s=0.2, lease_ttl_s=5),
                )
                ends[stats.status] = ends.get(stats.status, 0) + 1
    out.put(ends)


@pytest.mark.slow
def test_three_processes_three_sources_nothing_lost_duplicated_or_too_early(make_mock, database_url, redis_url, store):
    mocks = [make_mock(backlog=2000, rate=40, error_rate=0.1, random_seed=i) for i in range(3)]
    sources = [
        source_config(f"c{i}_{os.getpid()}_{int(time.time())}", m.url, page_size=100, max_run_seconds=2)
        for i, m in enumerate(mocks)
    ]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_consumer, args=(database_url, redis_url, sources, 12.0, out)) for _ in range(3)]
    for p in procs:
        p.start()
    endings = [out.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sum(e.get(DrainStatus.LEASE_BUSY, 0) for e in endings) > 0, "the processes really competed for the sources"
    for source, mock in zip(sources, mocks):
        mock.control({"producing": False, "error_rate": 0.0})
        final = run_drain(source, database_url, redis_url)  # catch up whatever arrived last
        assert final.status == DrainStatus.CAUGHT_UP, final.summary()
        stored = store.event_ids(source.name)
        seen = mock.stats(include_ids=True)
        assert stored == sorted(seen["served_ids"]), "stored ids are exactly the served ids"
        assert stored == list(range(1, stored[-1] + 1)), "ids contiguous, none duplicated"
        assert store.source_status(source.name).cursor == stored[-1]
        assert seen["gaps_under_200ms"] == 0, seen
        assert seen["min_gap_ms"] >= 200


@pytest.mark.slow
def test_a_process_paused_past_its_lease_is_fenced_and_loses_nothing(
    make_mock, database_url, redis_url, store, redis_client, source_name, tmp_path
):
    mock = make_mock(backlog=3000, latency_ms=100)
    sources_file = tmp_path / "sources.yaml"
    sources_file.write_text(
        f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    page_size: 50\n    timeout_s: 2\n"
    )
    env = {
        **os.environ,
        "EVENT_INGEST_SOURCES": str(sources_file),
        "EVENT_INGEST_DATABASE_URL": database_url,
        "EVENT_INGEST_REDIS_URL": redis_url,
    }
    stale = subprocess.Popen(
        [sys.executable, "-m", "event_ingest.cli", "ingest", source_name, "--lease-ttl", "1", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = store.source_status(source_name)
            if status and status.cursor >= 100:
                break
            time.sleep(0.05)
        else:
            stale.kill()
            pytest.fail(f"the first consumer made no progress: {stale.communicate()[1][-2000:]}")
        os.kill(stale.pid, signal.SIGSTOP)
        lease_key = LEASE_PREFIX + source_name
        deadline = time.monotonic() + 60
        while redis_client.exists(lease_key):  # the stopped holder's lease expires (TTL 1 s) while it sleeps
            assert time.monotonic() < deadline, "the stopped holder's lease never expired"
            time.sleep(0.05)
        source = source_config(source_name, mock.url, page_size=50, timeout_s=2)
        taker = run_drain(source, database_url, redis_url, max_seconds=60)
        assert taker.status == DrainStatus.CAUGHT_UP, taker.summary()
        os.kill(stale.pid, signal.SIGCONT)
        out, err = stale.communicate(timeout=60)
    finally:
        if stale.poll() is None:
            os.kill(stale.pid, signal.SIGCONT)
            stale.kill()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] in (DrainStatus.FENCED, DrainStatus.LEASE_LOST), (result, err[-2000:])
    assert stale.returncode == 1
    assert store.event_ids(source_name) == list(range(1, 3001))
    assert mock.stats()["gaps_under_200ms"] == 0


def test_a_gzip_page_is_decoded_and_stored(make_mock, database_url, redis_url, source_name, store):
    import base64
    import gzip

    mock = make_mock(backlog=0)
    page = {"events": [{"id": i, "payload": {"n": i}} for i in range(1, 4)]}
    mock.control(
        {
            "next": [
                {
                    "kind": "body",
                    "content_encoding": "gzip",
                    "content_type": "application/json",
                    "body_b64": base64.b64encode(gzip.compress(json.dumps(page).encode())).decode(),
                }
            ]
        }
    )
    stats = run_drain(source_config(source_name, mock.url), database_url, redis_url)
    assert stats.status == DrainStatus.CAUGHT_UP, stats.summary()
    assert store.event_ids(source_name) == [1, 2, 3]


def test_slots_given_back_unsent_use_up_no_attempt(make_mock, store, redis_client, source_name, monkeypatch, caplog):
    """A process paused between its grant and its send gives the slot back unsent (test_gate.py). That is no
    failed attempt: more stale slots in a row than ``max_attempts`` must not end the drain as a source error."""
    import dataclasses
    import logging

    from event_ingest.core.gate import Gate

    caplog.set_level(logging.WARNING, logger="event_ingest")
    mock = make_mock(backlog=5)
    source = source_config(source_name, mock.url, max_attempts=5)
    stale_left = [source.max_attempts + 2]
    real_acquire = Gate.acquire

    def paused_after_the_grant(self, *args, **kwargs):
        grant = real_acquire(self, *args, **kwargs)
        if grant is not None and stale_left[0] > 0:
            stale_left[0] -= 1
            # As if the process had stopped for a whole interval right after the grant (the client's own
            # clock says so; nothing waits here).
            grant = dataclasses.replace(grant, asked_monotonic=grant.asked_monotonic - source.min_interval_s)
        return grant

    monkeypatch.setattr(Gate, "acquire", paused_after_the_grant)
    stats = drain(source, store=store, redis_client=redis_client, options=DrainOptions(backoff_base_s=0.05))

    assert stats.status == DrainStatus.CAUGHT_UP, stats.summary()
    assert stale_left == [0], "every stale slot was given back"
    assert store.event_ids(source_name) == [1, 2, 3, 4, 5]
    seen = mock.stats()
    assert seen["requests"] == 2  # the page and the empty page: nothing was sent on a stale slot
    assert seen["gaps_under_200ms"] == 0
    assert sum("slot went stale" in r.getMessage() for r in caplog.records) == source.max_attempts + 2


def test_a_tailing_drain_asks_redis_once_per_request(make_mock, store, redis_url, redis_client, source_name):
    """A good response's close reserves the next slot, so the gate costs one script per request, not two
    (watched in Redis with MONITOR: the EVALSHA calls on this source's gate key)."""
    mock = make_mock(backlog=40)
    source = source_config(source_name, mock.url, page_size=4)  # 10 pages, then an empty one
    gate_key = f"event-ingest:gate:{source_name}"
    calls = []
    watcher = connect_redis(redis_url)
    stop_word = f"stop-watching-{source_name}"
    with watcher.monitor() as monitor:

        def watch():
            for command in monitor.listen():
                text = command.get("command", "")
                if stop_word in text:
                    return
                if text.startswith("EVALSHA") and gate_key in text:
                    calls.append(text)

        watching = threading.Thread(target=watch)
        watching.start()
        done = [drain(source, store=store, redis_client=redis_client)]
        redis_client.echo(stop_word)
        watching.join(60)
    [stats] = done
    assert stats.status == DrainStatus.CAUGHT_UP, stats.summary()
    requests = mock.stats()["requests"]
    assert requests == 11
    # One acquire for the first request, one script per response after it (close-and-reserve or close), and
    # the give-back at the end: never two per request.
    assert len(calls) <= requests + 2, (len(calls), requests)
    watcher.close()
