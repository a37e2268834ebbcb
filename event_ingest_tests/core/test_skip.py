"""`skip`: a source stuck on a page it cannot read is moved past it by an operator, fenced like a drain.

The stuck page comes from the mock source's one-shot responses: an item whose id has 5000 digits (the
parser refuses it, and no id can be read from it), first on the page at the cursor, every time."""

from __future__ import annotations

import base64

import pytest

from event_ingest.core import Fenced, Lease, drain
from event_ingest.core.page import Event
from event_ingest.core.progress import DrainStatus
from event_ingest.core.skip import SkipFailed, SkipRefused, skip_page
from event_ingest_tests.conftest import source_config

BAD_ITEM = b'{"id": 3' + b"0" * 5000 + b', "payload": "unreadable"}'


def shot(*items: bytes) -> dict:
    return {"kind": "body", "body_b64": base64.b64encode(b'{"events": [' + b", ".join(items) + b"]}").decode()}


def query(store, sql: str, *params) -> list[tuple]:
    rows = store.conn.execute(sql, params).fetchall()
    store.conn.rollback()
    return rows


@pytest.fixture
def stuck(make_mock, store, redis_client, source_name):
    """A source drained up to id 2 and stuck on the page at lastId=2 (served twice more: a drain, a skip)."""
    mock = make_mock(backlog=6)
    stuck_page = shot(BAD_ITEM, b'{"id": 4, "payload": "four"}')
    mock.control(
        {"next": [shot(b'{"id": 1, "payload": 1}', b'{"id": 2, "payload": 2}', BAD_ITEM), stuck_page, stuck_page]}
    )
    source = source_config(source_name, mock.url, timeout_s=1.0)
    stats = drain(source, store=store, redis_client=redis_client)
    assert stats.status == DrainStatus.STUCK and stats.cursor_after == 2, stats.summary()
    # The drain went on until the page at the cursor held nothing it could pass: it ended stuck.
    assert mock.stats()["requests"] == 2 and mock.control({})["queued"] == ["body"]
    assert any("`event-ingest skip` moves past it" in w for w in stats.warnings), stats.warnings
    return source, mock, stats.epoch


def test_skip_keeps_the_page_moves_the_cursor_and_the_source_flows_again(stuck, store, redis_client):
    source, mock, drain_epoch = stuck
    result = skip_page(source, store=store, redis_client=redis_client, to_id=3)
    assert (result.cursor_before, result.cursor_after, result.epoch) == (2, 3, drain_epoch + 1)
    assert mock.control({})["queued"] == []  # it fetched the page at the cursor, through the gate

    rows = query(
        store, "SELECT raw, reason, event_id, seen_count FROM quarantine WHERE source = %s ORDER BY id", source.name
    )
    assert [(bytes(r[0]), r[2], r[3]) for r in rows] == [
        (BAD_ITEM, None, 2),  # the unreadable item, seen by two drain requests
        (b'{"events": [' + BAD_ITEM + b', {"id": 4, "payload": "four"}]}', None, 1),  # the page, as served
    ]
    assert f"`event-ingest skip {source.name} --to-id 3` moved the cursor 2 -> 3" in rows[1][1]
    assert query(store, "SELECT cursor, epoch FROM source_state WHERE source = %s", source.name) == [(3, result.epoch)]

    stats = drain(source, store=store, redis_client=redis_client)
    assert stats.status == DrainStatus.CAUGHT_UP, stats.summary()
    # 4 comes from the source's own page now (not "four" from the skipped page): nothing skipped was stored.
    events = query(store, "SELECT event_id, payload FROM events WHERE source = %s ORDER BY 1", source.name)
    assert [e[0] for e in events] == [1, 2, 4, 5, 6] and events[2][1]["seq"] == 4
    assert mock.stats()["gaps_under_200ms"] == 0  # the skip's request was spaced like any other


def test_skip_fences_out_a_drain_that_was_paused_through_it(stuck, store, redis_client):
    source, _, _ = stuck
    stale_epoch, stale_cursor = store.begin_epoch(source.name)  # a holder that then paused past its lease
    skip_page(source, store=store, redis_client=redis_client, to_id=3)
    with pytest.raises(Fenced):
        store.commit_page(
            source.name, epoch=stale_epoch, old_cursor=stale_cursor, new_cursor=4, events=[Event(4, '"late"')]
        )
    assert query(store, "SELECT cursor FROM source_state WHERE source = %s", source.name) == [(3,)]
    assert query(store, "SELECT count(*) FROM events WHERE source = %s AND event_id = 4", source.name) == [(0,)]


def test_skip_refuses_to_move_back_and_waits_for_the_lease(stuck, store, redis_client):
    source, mock, drain_epoch = stuck
    requests = mock.stats()["requests"]
    for to_id in (2, 1):
        with pytest.raises(SkipRefused, match=f"--to-id {to_id} is not above the cursor 2; nothing done"):
            skip_page(source, store=store, redis_client=redis_client, to_id=to_id)
    with Lease(redis_client, source.name, ttl_s=30, wait_s=1) as lease:  # a drain is running
        assert lease.acquire()
        with pytest.raises(SkipFailed, match="a drain holds the lease; nothing done"):
            skip_page(source, store=store, redis_client=redis_client, to_id=3, lease_wait_s=0.5)
    # Nothing was asked of the source, and nothing changed in Postgres.
    assert mock.stats()["requests"] == requests
    assert query(store, "SELECT cursor, epoch FROM source_state WHERE source = %s", source.name) == [(2, drain_epoch)]
    assert query(store, "SELECT count(*) FROM quarantine WHERE source = %s", source.name) == [(1,)]


def test_a_source_error_at_the_cursor_moves_nothing(make_mock, store, redis_client, source_name):
    mock = make_mock(backlog=3)
    mock.control({"next": [{"kind": "status", "status": 503}]})
    source = source_config(source_name, mock.url, timeout_s=1.0)
    with pytest.raises(SkipFailed, match="the page at lastId=0 could not be fetched .HTTP 503"):
        skip_page(source, store=store, redis_client=redis_client, to_id=2)
    assert query(store, "SELECT cursor FROM source_state WHERE source = %s", source_name) == [(0,)]
    assert query(store, "SELECT count(*) FROM quarantine WHERE source = %s", source_name) == [(0,)]
