"""Continuity: a drain that tails, a standby that takes over, workers that hand sources over.

Outcomes are judged at the mock source (its recorder: every arrival, every id served) and in
Postgres (the rows), never by the consumer's own counters. Nothing here times the handoff:
the pause at a handoff is a benchmark figure (`event-ingest bench continuity`).
"""

from __future__ import annotations

import math
import threading
import time

import pytest

from event_ingest.core import DrainOptions, Store, connect_redis, drain
from event_ingest.core.progress import DrainStatus
from event_ingest.core.worker import Heartbeat, Worker, WorkerOptions, read_heartbeats, sources_to_host
from event_ingest_tests.conftest import source_config

WAIT_S = 60  # only a hung test waits this long


def wait_until(condition, timeout=WAIT_S, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def served_ids(mock) -> list[int]:
    return mock.stats(include_ids=True)["served_ids"]


def test_a_tailing_drain_keeps_polling_after_the_head_until_stopped(
    make_mock, database_url, redis_url, store, source_name
):
    mock = make_mock(backlog=50, rate=40)
    source = source_config(source_name, mock.url, page_size=20)
    store.apply_schema([source_name])
    stop = threading.Event()
    result = {}

    def run():
        with Store(database_url) as s:
            result["stats"] = drain(
                source,
                store=s,
                redis_client=connect_redis(redis_url),
                should_stop=stop.is_set,
                options=DrainOptions(tail=True, max_seconds=math.inf),
            )

    thread = threading.Thread(target=run)
    thread.start()
    # Past the backlog and well into the live stream: a drain that ended on its first empty page
    # would never get here.
    wait_until(
        lambda: (store.source_status(source_name) or None) and store.source_status(source_name).cursor > 200,
        what="the drain to follow the live producer",
    )
    stop.set()
    thread.join(WAIT_S)
    assert result["stats"].status == DrainStatus.STOPPED
    seen = mock.stats()
    assert seen["gaps_under_200ms"] == 0
    assert store.event_ids(source_name) == served_ids(mock)  # everything served is stored, nothing else


def test_a_quiet_source_is_polled_at_its_idle_pace(make_mock, database_url, redis_url, store, source_name):
    mock = make_mock(backlog=3)
    source = source_config(source_name, mock.url, idle_poll_ms=700)
    store.apply_schema([source_name])
    stop = threading.Event()

    def run():
        with Store(database_url) as s:
            drain(
                source,
                store=s,
                redis_client=connect_redis(redis_url),
                should_stop=stop.is_set,
                options=DrainOptions(tail=True, max_seconds=math.inf),
            )

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: mock.stats()["requests"] >= 5, what="five polls")
    stop.set()
    thread.join(WAIT_S)
    arrivals = mock.stats(include_arrivals=True)["arrivals"]
    gaps_ms = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:])]
    # The first request finds the backlog and the second follows at the spacing limit; from then on
    # every poll finds nothing new, and comes no sooner than idle_poll_ms after the one before.
    assert gaps_ms[0] >= 200 and min(gaps_ms[1:]) >= 700, gaps_ms
    assert store.event_ids(source_name) == [1, 2, 3]
    assert store.poll_age_s(source_name) is not None  # freshness sees an idle source as polled


def test_a_standby_takes_the_source_over_when_the_holder_lets_go(
    make_mock, database_url, redis_url, store, source_name
):
    """Two tailing drains of one source: one holds the lease, the other stands by. Stopping the holder
    hands the source over; nothing is lost or stored twice, and no gap at the source is short."""
    mock = make_mock(backlog=100, rate=50)
    source = source_config(source_name, mock.url, page_size=30)
    store.apply_schema([source_name])
    stops = [threading.Event(), threading.Event()]
    results = [None, None]

    def run(i):
        with Store(database_url) as s:
            results[i] = drain(
                source,
                store=s,
                redis_client=connect_redis(redis_url),
                should_stop=stops[i].is_set,
                options=DrainOptions(tail=True, max_seconds=math.inf, lease_wait_s=math.inf),
            )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    threads[0].start()
    wait_until(
        lambda: (store.source_status(source_name) or None) and store.source_status(source_name).cursor > 0,
        what="the first drain to commit",
    )
    threads[1].start()
    time.sleep(1.0)  # let the standby stand by for a while (it must send nothing meanwhile)
    before = mock.stats()["requests"]
    stops[0].set()
    threads[0].join(WAIT_S)
    epoch_first = results[0].epoch
    wait_until(lambda: store.source_status(source_name).epoch > epoch_first, what="the standby to take over")
    wait_until(lambda: mock.stats()["requests"] > before + 10, what="the standby to poll")
    stops[1].set()
    threads[1].join(WAIT_S)
    assert results[0].status == DrainStatus.STOPPED and results[1].status == DrainStatus.STOPPED
    assert results[1].epoch == epoch_first + 1  # its requests were seen at the source (waited for above)
    seen = mock.stats()
    assert seen["gaps_under_200ms"] == 0
    assert store.event_ids(source_name) == served_ids(mock)


def test_worker_policy_hosts_its_slot_minus_paused_removed_and_handed_over():
    me = Heartbeat("w1", started=100.0, retiring=True, hosting=["a", "b", "c"], members=["a", "b", "c", "d"])
    newer = Heartbeat("w2", started=200.0, retiring=False, hosting=["a"], members=["a", "b", "c", "d"])
    older = Heartbeat("w0", started=50.0, retiring=True, hosting=["b"], members=["a", "b", "c", "d"])
    members = ["a", "b", "c", "d"]
    assert sources_to_host(members, paused=set(), configured=None, me=me, peers=[]) == {"a", "b", "c", "d"}
    assert sources_to_host(members, paused={"d"}, configured={"a", "b", "d"}, me=me, peers=[]) == {"a", "b"}
    # A newer worker standing by for "a" takes it; an older one takes nothing from us.
    assert sources_to_host(members, paused=set(), configured=None, me=me, peers=[newer, older]) == {"b", "c", "d"}
    assert sources_to_host(members, paused=set(), configured=None, me=newer, peers=[me]) == set(members)


@pytest.mark.slow
def test_a_retiring_worker_hands_its_sources_to_a_newer_one_without_losing_an_event(
    make_mock, database_url, redis_url, store
):
    suffix = f"{int(time.time() * 1000) % 10**8}"
    mocks = [make_mock(backlog=200, rate=30, name=f"w{i}") for i in range(3)]
    sources = [source_config(f"wk{i}_{suffix}", m.url, page_size=50) for i, m in enumerate(mocks)]
    names = [s.name for s in sources]
    store.apply_schema(names)
    redis_client = connect_redis(redis_url)
    reports: list = []
    workers: list[Worker] = []
    stop_all = threading.Event()

    def policy(worker: Worker) -> set[str]:
        peers = read_heartbeats(redis_client, [w.id for w in workers if w is not worker]).values()
        return sources_to_host(names, paused=set(), configured=None, me=worker.heartbeat, peers=peers)

    def start(worker_id: str, options: WorkerOptions) -> tuple[Worker, threading.Thread, list]:
        worker = Worker(
            worker_id,
            sources,
            database_url=database_url,
            redis_client=redis_client,
            options=options,
            report=reports.append,
        )
        workers.append(worker)
        ended: list[str] = []
        thread = threading.Thread(
            target=lambda: ended.append(worker.run(policy, should_stop=stop_all.is_set)), daemon=True
        )
        thread.start()
        return worker, thread, ended

    common = dict(handoff_s=60, report_every_s=1, poll_s=0.2, lease_ttl_s=3, overstay=1000)
    try:
        # The first worker retires at once (planned life 60 s, handoff 60 s) and keeps draining until a
        # newer worker stands by for its sources.
        first, first_thread, first_end = start(f"first-{suffix}", WorkerOptions(run_seconds=60, **common))
        wait_until(
            lambda: all((store.source_status(n) or None) and store.source_status(n).cursor >= 200 for n in names),
            what="the first worker to drain every backlog",
        )
        assert first.retiring and first_thread.is_alive()
        time.sleep(0.01)  # the second worker must be strictly newer
        second, second_thread, second_end = start(f"second-{suffix}", WorkerOptions(run_seconds=3600, **common))
        first_thread.join(WAIT_S)  # it hands everything over, then ends by itself
        assert first_end == ["handed over to a successor"]
        wait_until(
            lambda: len(second.hosts) == 3 and all(h.state == "draining" for h in second.hosts.values()),
            what="the second worker to drain every source",
        )
        epochs = {n: store.source_status(n).epoch for n in names}
        wait_until(
            lambda: all(store.source_status(n).cursor > 400 for n in names), what="more events after the handoff"
        )
    finally:
        stop_all.set()
    second_thread.join(WAIT_S)
    assert second_end == ["stopped"]
    assert all(store.source_status(n).epoch == epochs[n] for n in names)  # nobody took over after the handoff
    for source, mock in zip(sources, mocks):
        seen = mock.stats()
        assert seen["gaps_under_200ms"] == 0, (source.name, seen["min_gap_ms"])
        assert store.event_ids(source.name) == served_ids(mock)
    assert redis_client.get(f"event-ingest:worker:{second.id}") is None  # heartbeat gone with it
    assert sum(r.counts.events_stored for batch in reports for r in batch) == sum(
        len(served_ids(m)) for m in mocks
    )  # windows add up
