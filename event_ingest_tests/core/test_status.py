"""What status reads: request and error counters (judged against the source's own count), stuck sources
(real pages the parser cannot get past), leases, removed and renamed sources - on a read-only store."""

from __future__ import annotations

import base64
import math
import threading
import time

import pytest

from event_ingest.core import DrainOptions, Lease, Store, StoreError, drain
from event_ingest.core.drain import Drain
from event_ingest.core.progress import DrainStatus
from event_ingest.core.skip import skip_page
from event_ingest.core.status import read_status, stuck_check, suspected_renames
from event_ingest_tests.conftest import source_config

BAD_ITEM = b'{"id": 3' + b"0" * 5000 + b', "payload": "unreadable"}'  # no id can be read from it
TRUNCATED = base64.b64encode(b'{"events": [{"id": 1, "pay').decode()


def shot(body: bytes) -> dict:
    return {"kind": "body", "body_b64": base64.b64encode(body).decode()}


def counters(store, name):
    row = store.conn.execute(
        "SELECT requests, errors, last_error, recent_errors / nullif(recent_requests, 0) "
        "FROM source_state WHERE source = %s",
        (name,),
    ).fetchone()
    store.conn.rollback()
    return row


def failed_at_source(mock) -> int:
    return sum(n for code, n in mock.stats()["statuses"].items() if code != "200") + mock.stats()["faults"].get(
        "malformed", 0
    )


def test_requests_and_errors_are_counted_as_the_source_saw_them(make_mock, store, redis_client, source_name):
    mock = make_mock(backlog=600, error_rate=0.3, malformed_rate=0.1, random_seed=11)
    source = source_config(source_name, mock.url, page_size=50, max_attempts=10, timeout_s=1.0)
    stats = drain(source, store=store, redis_client=redis_client, options=DrainOptions(backoff_base_s=0.01))
    assert stats.status == DrainStatus.CAUGHT_UP, stats.summary()
    requests, errors, last_error, rate = counters(store, source_name)
    seen = mock.stats()
    assert requests == seen["requests"] and errors == failed_at_source(mock) > 0
    assert last_error.startswith(("HTTP 500", "malformed page"))
    assert rate == pytest.approx(errors / requests, rel=0.01)  # seconds of decay out of an hour's time constant
    [row] = [r for r in read_status(store, [source_name], redis_client).rows if r.source == source_name]
    assert (row.requests, row.errors, row.error_rate) == (requests, errors, round(rate, 4))


def test_a_tailing_drain_flushes_its_counts_with_the_writes_it_makes_anyway(
    make_mock, database_url, store, redis_client, source_name
):
    mock = make_mock(backlog=20, rate=5, error_rate=0.2, random_seed=5)
    source = source_config(source_name, mock.url, timeout_s=1.0)
    store.apply_schema([source_name])
    stop = threading.Event()
    with Store(database_url) as drain_store:
        thread = threading.Thread(
            target=drain,
            args=(source,),
            kwargs=dict(
                store=drain_store,
                redis_client=redis_client,
                should_stop=stop.is_set,
                options=DrainOptions(tail=True, max_seconds=math.inf, backoff_base_s=0.01),
            ),
        )
        thread.start()
        deadline = time.monotonic() + 60
        # While it runs, Postgres follows the source within a few requests (no write per request).
        while counters(store, source_name)[0] < 25:
            assert time.monotonic() < deadline, "counts never reached Postgres"
            time.sleep(0.1)
        assert 0 <= mock.stats()["requests"] - counters(store, source_name)[0] <= 30
        stop.set()
        thread.join(60)
    requests, errors, _, _ = counters(store, source_name)
    assert (requests, errors) == (mock.stats()["requests"], failed_at_source(mock))


@pytest.fixture
def stuck_on_an_item(make_mock, store, redis_client, source_name):
    """Drained to id 2, then the page at lastId=2 starts with an item whose id cannot be read."""
    mock = make_mock(backlog=6)
    stuck_page = shot(b'{"events": [' + BAD_ITEM + b', {"id": 4, "payload": 4}]}')
    mock.control(
        {
            "next": [
                shot(b'{"events": [{"id": 1, "payload": 1}, {"id": 2, "payload": 2}, ' + BAD_ITEM + b"]}"),
                stuck_page,
                stuck_page,
            ]
        }
    )
    source = source_config(source_name, mock.url, timeout_s=1.0)
    stats = drain(source, store=store, redis_client=redis_client)
    assert stats.cursor_after == 2, stats.summary()
    return source, mock


def test_a_drain_stopped_before_an_unreadable_item_ends_stuck_not_caught_up(
    make_mock, store, redis_client, source_name
):
    """Good pages may wait behind the item: the drain that cannot pass it says so and is not ok."""
    mock = make_mock(backlog=6)
    stuck_page = shot(b'{"events": [' + BAD_ITEM + b', {"id": 4, "payload": 4}]}')
    mock.control({"next": [shot(b'{"events": [{"id": 1, "payload": 1}, {"id": 2, "payload": 2}]}'), stuck_page]})
    stats = drain(source_config(source_name, mock.url, timeout_s=1.0), store=store, redis_client=redis_client)
    assert (stats.status, stats.ok, stats.cursor_after, stats.caught_up) == (DrainStatus.STUCK, False, 2, False)
    assert stats.stuck == stats.error and stats.error.startswith(
        f"source {source_name!r} at lastId=2: stuck before an item that cannot be read and has no readable id"
    )
    assert f"`event-ingest skip {source_name} --to-id N`" in stats.error
    assert mock.stats()["requests"] == 2  # it did not ask for the same page again
    assert store.source_status(source_name).last_poll_at is not None  # the source answered: it was polled


def test_a_tailing_drain_stuck_before_an_item_says_so_and_moves_on_when_the_source_does(
    make_mock, database_url, store, redis_client, source_name
):
    mock = make_mock(backlog=6)
    stuck_page = shot(b'{"events": [' + BAD_ITEM + b', {"id": 4, "payload": 4}]}')
    mock.control({"next": [shot(b'{"events": [{"id": 1, "payload": 1}, {"id": 2, "payload": 2}]}'), *[stuck_page] * 4]})
    source = source_config(source_name, mock.url, timeout_s=1.0)
    store.apply_schema([source_name])
    stop = threading.Event()
    with Store(database_url) as drain_store:
        tailing = Drain(
            source,
            store=drain_store,
            redis_client=redis_client,
            options=DrainOptions(tail=True, max_seconds=math.inf),
            should_stop=stop.is_set,
        )
        thread = threading.Thread(target=tailing.run)
        thread.start()
        try:
            seen_stuck = wait_for(lambda: tailing.progress().stuck, "the drain to report the source stuck")
            assert seen_stuck.startswith(f"source {source_name!r} at lastId=2: stuck before an item")
            assert not tailing.progress().caught_up
            # It polls on: once the source serves the good page again, it takes it and is no longer stuck.
            wait_for(
                lambda: (now := tailing.progress()).cursor == 6 and now.caught_up,
                "the drain to move on with the source",
            )
            assert (now := tailing.progress()).stuck is None and now.caught_up
        finally:
            stop.set()
            thread.join(60)
    assert tailing.stats.status == DrainStatus.STOPPED and store.event_ids(source_name) == [1, 2, 3, 4, 5, 6]
    assert mock.control({})["queued"] == []  # every stuck page was asked for: it kept polling


def wait_for(condition, what, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_an_item_without_a_readable_id_at_the_cursor_is_stuck_until_skipped(stuck_on_an_item, store, redis_client):
    source, _ = stuck_on_an_item
    result = stuck_check(store, source.name)
    assert not result.passed and result.stuck.at_cursor == 2
    assert "nor can its id, so the cursor stops before it" in result.stuck.reason
    assert f"`event-ingest skip {source.name} --to-id N`" in result.summary()
    [row] = [r for r in read_status(store, [source.name]).rows if r.source == source.name]
    assert row.stuck and row.stuck_reason == result.summary()
    skip_page(source, store=store, redis_client=redis_client, to_id=3)
    assert stuck_check(store, source.name).passed
    assert drain(source, store=store, redis_client=redis_client).cursor_after == 6


def test_a_body_that_is_never_a_page_is_stuck_a_broken_one_served_once_is_not(
    make_mock, store, redis_client, source_name
):
    mock = make_mock(backlog=5)
    source = source_config(source_name, mock.url, timeout_s=1.0, max_attempts=2)
    broken = {"kind": "body", "body_b64": TRUNCATED}
    # Once, then the retry works: not stuck.
    mock.control({"next": [broken]})
    assert drain(source, store=store, redis_client=redis_client, options=DrainOptions(backoff_base_s=0.01)).ok
    assert stuck_check(store, source.name).passed
    # The same body at the cursor (5) on every attempt of two drains: a body quarantined again and again.
    mock.control({"next": [broken] * 4})
    for _ in range(2):
        stats = drain(source, store=store, redis_client=redis_client, options=DrainOptions(backoff_base_s=0.01))
        assert stats.status == DrainStatus.SOURCE_ERROR, stats.summary()
    # The source was polled successfully a moment ago, so it is not called stuck for STUCK_AFTER_S...
    assert stuck_check(store, source.name).passed
    # ... but it is once that long went by without a successful poll.
    stuck = store.stuck(source.name, after_s=0)
    assert stuck is not None and stuck.at_cursor == 5 and stuck.seen_count == 4
    assert stuck.reason.startswith("malformed page at lastId=5")
    # The source serves pages again: a successful poll, not stuck.
    assert drain(source, store=store, redis_client=redis_client).ok
    assert store.stuck(source.name, after_s=0) is None


def test_a_source_never_read_once_is_stuck_on_its_first_body(make_mock, store, redis_client, source_name):
    mock = make_mock(backlog=5)
    mock.control({"next": [{"kind": "body", "body_b64": TRUNCATED}] * 2})
    source = source_config(source_name, mock.url, timeout_s=1.0, max_attempts=2)
    assert (
        drain(source, store=store, redis_client=redis_client, options=DrainOptions(backoff_base_s=0.01)).status
        == DrainStatus.SOURCE_ERROR
    )
    result = stuck_check(store, source.name)
    assert not result.passed and result.stuck.at_cursor == 0


def test_status_reads_with_a_read_only_store(make_mock, database_url, store, redis_client, source_name):
    mock = make_mock(backlog=10)
    drain(source_config(source_name, mock.url), store=store, redis_client=redis_client)
    removed = f"{source_name}_old"
    store.apply_schema([removed])
    with Store(database_url, read_only=True) as reader:
        with pytest.raises(StoreError, match="read-only transaction"):
            reader.rewind(source_name, 0)
        with Lease(redis_client, source_name, ttl_s=30) as lease:
            assert lease.acquire()
            report = read_status(reader, [source_name, "not_yet"], redis_client)
    rows = {r.source: r for r in report.rows if r.source in (source_name, removed, "not_yet")}
    assert (rows[source_name].cursor, rows[source_name].events, rows[source_name].lease) == (10, 10, True)
    assert rows[source_name].config == "configured" and rows[removed].config == "removed"
    assert rows[removed].lease is False and rows["not_yet"].config == "not started"
    assert store.source_status(source_name).cursor == 10


def test_renames_are_suspected_from_what_has_state_and_what_is_configured(store, source_name):
    old, new, other = f"{source_name}_a", f"{source_name}_b", f"{source_name}_c"
    store.apply_schema([old])
    activity = [a for a in store.source_activity() if a.source in (old, new, other)]
    # Before the new name ever ran: it has no state, and a name with state is gone from the file.
    [rename] = suspected_renames([new], activity, without_state_only=True)
    assert (rename.old, rename.new, rename.new_created_at) == (old, new, None)
    assert "put the old name back" in rename.summary()
    # After its first run: its state was made right after the old one stopped.
    store.apply_schema([new])
    activity = [a for a in store.source_activity() if a.source in (old, new, other)]
    assert [(r.old, r.new) for r in suspected_renames([new], activity)] == [(old, new)]
    assert suspected_renames([new], activity, without_state_only=True) == []
    assert suspected_renames([old, new], activity) == []  # nothing removed: nothing renamed
