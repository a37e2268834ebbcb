"""The store alone: schema, fenced commits, quarantine, gaps."""

from __future__ import annotations

import psycopg
import pytest

from event_ingest.core.page import Event, Quarantined
from event_ingest.core.store import Fenced, Store, StoreError, partition_name


def events(*ids):
    return [Event(i, f'{{"n": {i}}}') for i in ids]


def test_schema_is_idempotent_and_partitions_per_source(database_url, source_name):
    with Store(database_url) as a, Store(database_url) as b:
        a.apply_schema([source_name])
        b.apply_schema([source_name])  # second time: nothing changes, nothing fails
        row = a.conn.execute(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relname = %s",
            (partition_name(source_name),),
        ).fetchone()
        a.conn.rollback()
        assert row[0] == 1


def test_commit_stores_events_and_moves_the_cursor_together(store, source_name):
    store.ensure_source(source_name)
    epoch, cursor = store.begin_epoch(source_name)
    assert cursor == 0
    result = store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=3, events=events(1, 2, 3))
    assert result.inserted == 3
    status = store.source_status(source_name)
    assert (status.cursor, status.events, status.max_event_id) == (3, 3, 3)


def test_a_commit_after_another_holder_bumped_the_epoch_is_refused(store, source_name):
    store.ensure_source(source_name)
    stale_epoch, _ = store.begin_epoch(source_name)
    new_epoch, _ = store.begin_epoch(source_name)  # another consumer took over
    assert new_epoch == stale_epoch + 1
    with pytest.raises(Fenced):
        store.commit_page(source_name, epoch=stale_epoch, old_cursor=0, new_cursor=2, events=events(1, 2))
    assert store.event_ids(source_name) == []
    store.commit_page(source_name, epoch=new_epoch, old_cursor=0, new_cursor=2, events=events(1, 2))
    status = store.source_status(source_name)
    assert status.cursor == 2 and status.fenced_commits == 1


def test_a_commit_from_a_wrong_cursor_is_refused(store, source_name):
    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=2, events=events(1, 2))
    with pytest.raises(Fenced):
        store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=2, events=events(1, 2))


def test_failure_mid_page_leaves_cursor_and_events_agreeing(store, source_name):
    """A statement failing inside the page's transaction rolls back events and cursor together."""
    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    bad = events(1, 2) + [Event(3, "not json at all")]
    with pytest.raises(StoreError):
        store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=3, events=bad)
    status = store.source_status(source_name)
    assert status.cursor == 0 and status.events == 0
    store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=3, events=events(1, 2, 3))
    assert store.event_ids(source_name) == [1, 2, 3]


def test_connection_killed_mid_page_loses_nothing(database_url, store, source_name):
    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store.conn.info.backend_pid,))
    with pytest.raises(StoreError):
        store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=2, events=events(1, 2))
    with Store(database_url) as fresh:
        status = fresh.source_status(source_name)
        assert status.cursor == 0 and status.events == 0


def test_quarantine_keeps_raw_bytes_and_counts_repeats(store, source_name):
    store.ensure_source(source_name)
    item = Quarantined(b"\xff\xfe not json", "body is not valid UTF-8")
    store.quarantine(source_name, [item])
    store.quarantine(source_name, [item])
    raw, reason, seen = store.conn.execute(
        "SELECT raw, reason, seen_count FROM quarantine WHERE source = %s", (source_name,)
    ).fetchone()
    store.conn.rollback()
    assert bytes(raw) == item.raw and reason == item.reason and seen == 2


def test_gaps_are_found_and_quarantined_ids_fill_them(store, source_name):
    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    store.commit_page(
        source_name, epoch=epoch, old_cursor=0, new_cursor=9, events=events(1, 2, 5, 9),
        quarantined=[Quarantined(b'{"id": 6}', "payload too big", 6)],
    )
    gaps = [(g.first_missing, g.last_missing) for g in store.gaps(source_name)]
    assert gaps == [(3, 4), (7, 8)]


def test_unreachable_postgres_is_one_clear_error():
    with pytest.raises(StoreError, match=r"cannot connect to Postgres at postgresql://u:\*\*\*@127\.0\.0\.1:1/x"):
        Store("postgresql://u:secret@127.0.0.1:1/x", connect_timeout_s=1)
