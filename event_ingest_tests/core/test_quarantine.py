"""Quarantine handling: requeue through the fence, discard on request, bytes shown safely.

The quarantined item is real: the mock source serves a page whose event 2 holds a NUL character, which
Postgres jsonb cannot store, and a real drain keeps it in quarantine with its id (the cursor passes it)."""

from __future__ import annotations

import pytest

from event_ingest.core import Fenced, Lease, drain
from event_ingest.core.checks import cursor_check, gap_check, quarantine_check
from event_ingest.core.page import Event
from event_ingest.core.quarantine import (
    QuarantineRefused,
    RequeueFailed,
    discard,
    escape_bytes,
    read_events,
    requeue,
)
from event_ingest_tests.conftest import source_config

NUL_PAGE = [{"id": 1, "payload": "one"}, {"id": 2, "payload": "t\u0000wo"}, {"id": 3, "payload": "three"}]
CAP = 1024 * 1024


def query(store, sql: str, *params) -> list[tuple]:
    rows = store.conn.execute(sql, params).fetchall()
    store.conn.rollback()
    return rows


@pytest.fixture
def kept(make_mock, store, redis_client, source_name):
    """A source drained to id 5 with event 2 in quarantine; (source, mock, quarantine id)."""
    mock = make_mock(backlog=5)
    mock.control({"next": [{"kind": "events", "events": NUL_PAGE, "record": True}]})
    source = source_config(source_name, mock.url)
    stats = drain(source, store=store, redis_client=redis_client)
    assert stats.cursor_after == 5 and stats.quarantined == 1, stats.summary()
    [(item_id, reason, at_cursor)] = query(
        store, "SELECT id, reason, at_cursor FROM quarantine WHERE source = %s", source_name
    )
    assert "NUL character" in reason and at_cursor == 0  # served at lastId=0
    assert not quarantine_check(store, source_name).passed
    return source, mock, item_id


def state(store, name):
    return query(store, "SELECT cursor, epoch, last_poll_at FROM source_state WHERE source = %s", name)[0]


def test_requeue_of_a_fixed_item_stores_it_through_the_fence(kept, store, redis_client, tmp_path):
    source, mock, item_id = kept
    name = source.name
    cursor, epoch, polled = state(store, name)
    stale_epoch, stale_cursor = store.begin_epoch(name)  # a drain that then paused past its lease
    fixed = tmp_path / "item.json"
    fixed.write_bytes(b'{"id": 2, "payload": "two, fixed"}')

    result = requeue(
        store, redis_client, item_id, max_payload_bytes=CAP, fixed=fixed.read_bytes(), from_file=str(fixed)
    )

    assert (result.event_ids, result.cursor, result.epoch) == ([2], 5, stale_epoch + 1)
    assert store.event_ids(name) == [1, 2, 3, 4, 5]
    assert query(store, "SELECT payload FROM events WHERE source = %s AND event_id = 2", name) == [("two, fixed",)]
    # Cursor unchanged, and the source is not shown as polled by an operator's commit.
    assert state(store, name) == (cursor, stale_epoch + 1, polled)
    [(resolution, note)] = query(store, "SELECT resolution, resolution_note FROM quarantine WHERE id = %s", item_id)
    assert resolution == "requeued" and f"from the corrected item in {fixed}" in note
    # The checks: nothing open in quarantine any more, no gap, cursor at the highest id.
    assert quarantine_check(store, name).passed and gap_check(store, name).passed
    assert cursor_check(store, name).passed
    assert store.source_status(name).events == 5
    # The paused drain's commit is refused: the requeue bumped the epoch.
    with pytest.raises(Fenced):
        store.commit_page(name, epoch=stale_epoch, old_cursor=stale_cursor, new_cursor=6, events=[Event(6, "{}")])
    assert store.event_ids(name) == [1, 2, 3, 4, 5]
    with pytest.raises(QuarantineRefused, match="was requeued already"):
        requeue(store, redis_client, item_id, max_payload_bytes=CAP, fixed=fixed.read_bytes())


@pytest.mark.parametrize(
    "fixed, message",
    [
        (None, "still cannot be stored: payload holds a NUL character"),
        (b'{"id": 2, "payload": ', "cannot be read: body is not JSON"),
        (b'{"payload": "no id"}', "still cannot be stored: id is missing"),
        (b'{"id": 3, "payload": "three again"}', "already stores event 3"),
        (b'{"id": 9, "payload": "ahead"}', "event 9 is above the cursor 5: the source has not been read past it"),
        (b'{"events": []}', "holds no event"),
    ],
)
def test_requeue_refuses_what_still_cannot_be_stored_and_changes_nothing(kept, store, redis_client, fixed, message):
    source, _, item_id = kept
    before = state(store, source.name)
    with pytest.raises(QuarantineRefused, match=message):
        requeue(store, redis_client, item_id, max_payload_bytes=CAP, fixed=fixed)
    assert store.event_ids(source.name) == [1, 3, 4, 5]
    assert query(store, "SELECT resolution FROM quarantine WHERE id = %s", item_id) == [(None,)]
    cursor, epoch, polled = state(store, source.name)
    # Refused on what the bytes hold: before the lease and the epoch. Refused on the rows: after the bump.
    assert (cursor, polled) == (before[0], before[2]) and epoch in (before[1], before[1] + 1)


def test_requeue_waits_for_the_lease_and_does_nothing_while_a_drain_holds_it(kept, store, redis_client):
    source, _, item_id = kept
    before = state(store, source.name)
    with Lease(redis_client, source.name, ttl_s=30, wait_s=1) as lease:
        assert lease.acquire()
        with pytest.raises(RequeueFailed, match="a drain holds the source's lease; nothing done"):
            requeue(
                store, redis_client, item_id, max_payload_bytes=CAP, fixed=b'{"id": 2, "payload": 2}', lease_wait_s=0.3
            )
    assert state(store, source.name) == before
    assert store.event_ids(source.name) == [1, 3, 4, 5]


def test_discard_marks_keeps_the_bytes_and_a_new_sighting_opens_it_again(kept, store, redis_client):
    source, mock, item_id = kept
    item = discard(store, item_id)
    assert (item.state, item.raw) == ("discarded", b'{"id": 2, "payload": "t\\u0000wo"}')
    assert quarantine_check(store, source.name).passed
    assert gap_check(store, source.name).passed  # a discarded id is accounted for: a decision, not a gap
    with pytest.raises(QuarantineRefused, match=f"quarantine item {item_id} is discarded already"):
        discard(store, item_id)
    with pytest.raises(QuarantineRefused, match="quarantine item 0 does not exist"):
        discard(store, 0)
    # The source serves the same broken item again (a replay, a source re-sending): it is open again.
    mock.control({"next": [{"kind": "events", "events": NUL_PAGE, "record": True}]})
    drain(source, store=store, redis_client=redis_client)
    assert query(store, "SELECT resolution, seen_count, at_cursor FROM quarantine WHERE id = %s", item_id) == [
        (None, 2, 5)
    ]
    assert not quarantine_check(store, source.name).passed


def test_read_events_takes_an_item_or_a_whole_page():
    assert read_events(b'{"id": 7, "payload": {"a": 1}}', max_payload_bytes=CAP) == [Event(7, '{"a":1}')]
    page = b'{"events": [{"id": 7, "payload": 1}, {"id": 8, "payload": 2}]}'
    assert [e.id for e in read_events(page, max_payload_bytes=CAP)] == [7, 8]
    # An item that happens to carry an "events" member is still an item (it has an id).
    assert [e.id for e in read_events(b'{"id": 9, "events": [1], "payload": 0}', max_payload_bytes=CAP)] == [9]
    with pytest.raises(QuarantineRefused, match="payload is 12 bytes, over the 8-byte cap"):
        read_events(b'{"id": 7, "payload": "0123456789"}', max_payload_bytes=8)


def test_bytes_are_shown_so_they_cannot_drive_a_terminal_and_say_what_was_there():
    raw = "café \x1b[31m\\n\n\t \u00a0\u202e\U0001f600".encode() + b"\xff\xfe"
    shown = escape_bytes(raw)
    assert shown == "café \\u001b[31m\\\\n\\n\\t \\u00a0\\u202e😀\\xff\\xfe"
    assert all(c.isprintable() for c in shown)
