"""Replay: the cursor rewound through the fence while a live host keeps the source, judged at the source
(the lastId each request asked for, the ids served) and in Postgres (rows, counters, fenced commits)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from event_ingest.core import Store
from event_ingest.core.checks import cursor_check, gap_check
from event_ingest.core.host import SourceHost
from event_ingest.core.progress import DrainStatus
from event_ingest.core.replay import ReplayRefused, replay
from event_ingest_tests.conftest import source_config

WAIT_S = 60  # only a hung test waits this long


def wait_until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def lock_waiters(database_url: str) -> int:
    """Backends of this database waiting for a lock (the tests of one session run one at a time)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]


def query(store, sql: str, *params) -> list[tuple]:
    rows = store.conn.execute(sql, params).fetchall()
    store.conn.rollback()
    return rows


@pytest.fixture
def hosted(make_mock, database_url, redis_client, store, source_name):
    """A source with a live producer, hosted by a real SourceHost (standby, lease, tail) in its own thread."""
    mock = make_mock(backlog=300, rate=20)
    source = source_config(source_name, mock.url, page_size=70)
    store.apply_schema([source_name])
    host_store = Store(database_url, pool_size=2)
    host = SourceHost(source, store=host_store, redis_client=redis_client, lease_ttl_s=3).start()
    wait_until(lambda: store.source_status(source_name).cursor > 300, "the host to drain the backlog")
    yield source, mock, host
    host.stop()
    assert host.join(WAIT_S)
    host_store.close()


def test_a_replay_fences_the_live_host_which_reads_again_from_n(hosted, store):
    source, mock, host = hosted
    name = source.name
    before = store.source_status(name)
    asked_before = len(mock.stats(include_ids=True)["last_ids"])

    result = replay(store, name, from_id=123)

    assert (result.cursor_before >= 300, result.cursor_after, result.epoch) == (True, 123, before.epoch + 1)
    # The host's next commit was refused by the fence (counted in Postgres), it took the source over again
    # (a new epoch), and the source saw a request for lastId=123 after the replay.
    wait_until(
        lambda: 123 in mock.stats(include_ids=True)["last_ids"][asked_before:],
        "a request with lastId=123 at the source",
    )
    wait_until(lambda: store.source_status(name).cursor > result.cursor_before + 20, "the host to go on past the head")
    after = store.source_status(name)
    assert after.fenced_commits >= before.fenced_commits + 1
    assert after.epoch >= result.epoch + 1
    assert host.totals().drain_ends[DrainStatus.FENCED] >= 1
    host.stop()
    assert host.join(WAIT_S)
    served = mock.stats(include_ids=True)
    # Ids 124.. were served twice and stored once: the rows are exactly the ids served, and the counters
    # (kept by triggers on every insert) count each once.
    assert store.event_ids(name) == served["served_ids"]
    assert store.source_status(name).events == len(served["served_ids"])
    assert gap_check(store, name).passed and cursor_check(store, name).passed
    assert served["gaps_under_200ms"] == 0


def test_an_idle_host_is_fenced_at_its_poll_mark_and_reads_again_from_n(
    make_mock, database_url, redis_client, store, source_name
):
    """No new events, so the host commits nothing: only the epoch (checked by its periodic poll mark) can
    tell it the source was rewound."""
    mock = make_mock(backlog=100)
    source = source_config(source_name, mock.url, page_size=40)
    store.apply_schema([source_name])
    with Store(database_url) as host_store:
        host = SourceHost(source, store=host_store, redis_client=redis_client, lease_ttl_s=3).start()
        try:
            wait_until(
                lambda: (
                    store.source_status(source_name).cursor == 100
                    and store.source_status(source_name).last_poll_at is not None
                ),
                "the host to reach the head",
            )
            asked_before = len(mock.stats(include_ids=True)["last_ids"])
            replay(store, source_name, from_id=30)
            wait_until(
                lambda: 30 in mock.stats(include_ids=True)["last_ids"][asked_before:],
                "a request with lastId=30 at the source",
            )
            wait_until(lambda: store.source_status(source_name).cursor == 100, "the host to reach the head again")
        finally:
            host.stop()
            assert host.join(WAIT_S)
    assert host.totals().drain_ends[DrainStatus.FENCED] == 1
    assert store.event_ids(source_name) == list(range(1, 101))
    assert mock.stats()["gaps_under_200ms"] == 0


def test_delete_from_goes_with_the_cursor_move_and_the_rows_come_back(hosted, store, redis_client):
    source, mock, host = hosted
    name = source.name
    host.stop()  # a quiet moment to look at the rows between the replay and the next drain
    assert host.join(WAIT_S)
    cursor = store.source_status(name).cursor
    payload_before = query(store, "SELECT payload FROM events WHERE source = %s AND event_id = 250", name)

    result = replay(store, name, from_id=200, delete_from=240)

    assert (result.cursor_after, result.deleted) == (200, cursor - 239)
    assert store.event_ids(name) == list(range(1, 240))
    # The counting triggers followed the DELETE: the gap check's counters and the status agree with the rows.
    assert store.source_status(name).events == 239
    assert query(store, "SELECT sum(events) FROM id_blocks WHERE source = %s", name) == [(239,)]
    assert gap_check(store, name).passed  # nothing missing below the new highest id

    with Store(store.url) as host_store:
        again = SourceHost(source, store=host_store, redis_client=redis_client, lease_ttl_s=3).start()
        try:
            wait_until(lambda: store.source_status(name).cursor > cursor, "the deleted ids to be fetched again")
        finally:
            again.stop()
            assert again.join(WAIT_S)
    assert store.event_ids(name) == mock.stats(include_ids=True)["served_ids"]
    assert query(store, "SELECT payload FROM events WHERE source = %s AND event_id = 250", name) == payload_before


def test_nonsense_is_refused_and_changes_nothing(make_mock, store, redis_client, source_name):
    from event_ingest.core import drain

    mock = make_mock(backlog=50)
    source = source_config(source_name, mock.url)
    store.apply_schema([source_name])
    drain(source, store=store, redis_client=redis_client)
    state = query(store, "SELECT cursor, epoch FROM source_state WHERE source = %s", source_name)
    cases = [
        (dict(from_id=-1), "--from-id -1 is not a cursor"),
        (dict(from_id=51), "--from-id 51 is above the cursor 50; nothing done"),
        (dict(from_id=10, delete_from=10), "--delete-from 10 must be above --from-id 10"),
        (dict(from_id=10, delete_from=3), "events at or below 10 would be deleted and never fetched again"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ReplayRefused, match=message):
            replay(store, source_name, **kwargs)
    with pytest.raises(ReplayRefused, match="source 'never_seen_here' has no state"):
        replay(store, "never_seen_here", from_id=0)
    assert query(store, "SELECT cursor, epoch FROM source_state WHERE source = %s", source_name) == state
    assert store.event_ids(source_name) == list(range(1, 51))


def test_a_commit_racing_the_replay_lands_before_it_or_is_fenced(make_mock, database_url, store, source_name):
    """The replay locks the state row first: a commit that holds the row lock finishes first (then the
    replay rewinds past it); one that comes after is fenced. Never half of each."""
    from event_ingest.core import Fenced
    from event_ingest.core.page import Event

    store.apply_schema([source_name])
    epoch, cursor = store.begin_epoch(source_name)
    store.commit_page(
        source_name, epoch=epoch, old_cursor=cursor, new_cursor=10, events=[Event(i, "{}") for i in range(1, 11)]
    )
    with Store(database_url) as writer:
        conn = writer.conn
        # A commit in progress: it holds the row lock (the fence statement ran), not yet committed.
        conn.execute(
            "UPDATE source_state SET cursor = 20 WHERE source = %s AND epoch = %s AND cursor = 10", (source_name, epoch)
        )
        done = {}
        thread = threading.Thread(target=lambda: done.update(r=replay(store, source_name, from_id=5)))
        thread.start()
        # The replay queues behind the commit's row lock: seen in Postgres, not guessed from a sleep.
        wait_until(lambda: lock_waiters(database_url) > 0, "the replay to wait on the row lock")
        assert thread.is_alive()
        conn.commit()
        thread.join(WAIT_S)
    # It rewound from the cursor the commit left, under a new epoch.
    assert (done["r"].cursor_before, done["r"].cursor_after, done["r"].epoch) == (20, 5, epoch + 1)
    with pytest.raises(Fenced):
        store.commit_page(source_name, epoch=epoch, old_cursor=20, new_cursor=21, events=[Event(21, "{}")])
    assert query(store, "SELECT cursor FROM source_state WHERE source = %s", source_name) == [(5,)]
