"""Checks answered from counters: they must still find what an operator's SQL or a bug did to the rows."""

from __future__ import annotations

from event_ingest.core.checks import cursor_check, gap_check, quarantine_check
from event_ingest.core.page import Event, Quarantined
from event_ingest.core.store.schema import partition_name


def events(ids):
    return [Event(i, f'{{"n": {i}}}') for i in ids]


def store_ids(store, source, ids, page=10_000, quarantined=()):
    """Commit ids (ascending) page by page through the real fenced commit."""
    store.ensure_source(source)
    epoch, cursor = store.begin_epoch(source)
    ids = list(ids)
    for n in range(0, len(ids), page):
        chunk = ids[n : n + page]
        last = n + page >= len(ids)
        extra = list(quarantined) if last else []
        new_cursor = max([cursor, *chunk, *(q.event_id for q in extra if q.event_id is not None)])
        store.commit_page(
            source, epoch=epoch, old_cursor=cursor, new_cursor=new_cursor, events=events(chunk), quarantined=extra
        )
        cursor = new_cursor
    return cursor


def sql(store, statement, params=()):
    store.conn.execute(statement, params)
    store.conn.commit()


def ranges(result):
    return [(g.first_missing, g.last_missing) for g in result.gaps]


def test_an_event_deleted_in_the_middle_fails_the_gap_check(store, source_name):
    store_ids(store, source_name, range(1, 140_001))  # three id blocks
    clean = gap_check(store, source_name)
    assert clean.passed and clean.missing == 0 and clean.accounted == 140_000
    sql(store, "DELETE FROM events WHERE source = %s AND event_id = 70000", (source_name,))
    found = gap_check(store, source_name)
    assert not found.passed
    assert (found.missing, ranges(found), found.listed) == (1, [(70000, 70000)], "70000-70000")
    # The same through the partition (an operator naming the table they see in psql).
    sql(store, f"DELETE FROM {partition_name(source_name)} WHERE event_id BETWEEN 100 AND 109")
    found = gap_check(store, source_name)
    assert (found.missing, ranges(found)) == (11, [(100, 109), (70000, 70000)])
    assert found.ranges == 2 and found.ranges_complete


def test_a_gap_over_blocks_with_nothing_stored_is_one_range(store, source_name):
    store_ids(store, source_name, [*range(1, 11), *range(200_001, 200_011)])
    found = gap_check(store, source_name)
    assert (found.missing, ranges(found), found.ranges) == (199_990, [(11, 200_000)], 1)


def test_quarantined_ids_fill_gaps_and_count_once(store, source_name):
    # 3 is stored and quarantined too (a duplicate within a page): counted twice, it would hide 4.
    store_ids(
        store,
        source_name,
        [1, 2, 3, 5, 6],
        quarantined=[Quarantined(b'{"id": 3}', "duplicate id 3 within one page", 3)],
    )
    found = gap_check(store, source_name)
    assert (found.passed, found.missing, ranges(found)) == (False, 1, [(4, 4)])
    store.quarantine(source_name, [Quarantined(b'{"id": 4, "payload": "..."}', "payload is over the cap", 4)])
    assert gap_check(store, source_name).passed
    # The same bad bytes twice are one quarantine row; a second reason for id 4 must not count it again.
    store.quarantine(source_name, [Quarantined(b'{"id": 4}', "another reason", 4)])
    store.quarantine(source_name, [Quarantined(b'{"id": 9}', "payload is over the cap", 9)])
    found = gap_check(store, source_name)
    assert (found.missing, ranges(found), found.highest) == (2, [(7, 8)], 9)


def test_many_gaps_are_counted_in_full_and_listed_in_part(store, source_name):
    store_ids(store, source_name, range(1, 100, 2))  # 1, 3, ..., 99: 49 single-id gaps
    found = gap_check(store, source_name, listed=20)
    assert (found.missing, found.ranges, len(found.gaps), found.ranges_complete) == (49, 49, 20, True)
    assert found.listed.startswith("first 20 of 49: 2-2, 4-4, ")


def test_naming_ranges_reads_a_bounded_number_of_blocks(store, source_name):
    ids = [i for i in range(1, 3 * 65_536 + 10) if i not in (10, 70_000, 140_000)]
    store_ids(store, source_name, ids, page=20_000)
    bounded = gap_check(store, source_name, scan_blocks=2)
    assert (bounded.missing, bounded.blocks_incomplete, bounded.blocks_scanned) == (3, 3, 2)
    assert (ranges(bounded), bounded.ranges_complete) == ([(10, 10), (70_000, 70_000)], False)
    assert bounded.listed == "first 2 of at least 2: 10-10, 70000-70000"
    counted = gap_check(store, source_name, scan_blocks=0)  # what `event-ingest status` asks
    assert (counted.passed, counted.missing, counted.gaps) == (False, 3, [])
    whole = gap_check(store, source_name)
    assert (ranges(whole), whole.ranges_complete) == ([(10, 10), (70_000, 70_000), (140_000, 140_000)], True)


def test_counters_follow_updates_and_truncates(store, source_name):
    store_ids(store, source_name, range(1, 101))
    sql(store, "UPDATE events SET event_id = 200 WHERE source = %s AND event_id = 50", (source_name,))
    found = gap_check(store, source_name)
    assert (found.missing, ranges(found)) == (100, [(50, 50), (101, 199)])
    assert store.source_status(source_name).events == 100
    sql(store, f"TRUNCATE {partition_name(source_name)}")
    assert store.source_status(source_name).events == 0
    assert store.recent_minutes(source_name) == []
    assert gap_check(store, source_name).passed  # nothing stored: nothing missing


def test_counters_out_of_step_fail_the_check_until_recounted(store, source_name):
    store_ids(store, source_name, range(1, 101))
    # Triggers skipped (as a logical replica or a restore with session_replication_role would).
    store.conn.execute("SET session_replication_role = replica")
    store.conn.execute("DELETE FROM events WHERE source = %s AND event_id > 90", (source_name,))
    store.conn.execute("RESET session_replication_role")
    store.conn.commit()
    stale = gap_check(store, source_name)
    assert not stale.passed and stale.blocks_overcounted == 1
    assert "recount" in stale.summary()
    store.recount(source_name)
    assert gap_check(store, source_name).passed
    assert store.source_status(source_name).events == 90


def test_status_and_rollup_follow_writes_and_deletes(store, source_name):
    store_ids(store, source_name, range(1, 1001), page=100)
    sql(store, "DELETE FROM events WHERE source = %s AND event_id <= 10", (source_name,))
    (count,) = store.conn.execute("SELECT count(*) FROM events WHERE source = %s", (source_name,)).fetchone()
    store.conn.rollback()
    assert count == store.source_status(source_name).events == 990
    assert sum(n for _, n in store.recent_minutes(source_name)) == 990
    assert gap_check(store, source_name).passed  # the lowest id moved up: ids below it are not missing


def test_cursor_check_compares_the_cursor_with_the_highest_id_accounted_for(store, source_name):
    assert cursor_check(store, source_name).cursor is None  # not ingested yet
    cursor = store_ids(store, source_name, range(1, 51))
    assert cursor_check(store, source_name) == cursor_check(store, source_name).__class__(True, 50, 50)
    store.quarantine(source_name, [Quarantined(b'{"id": 60}', "payload is over the cap", 60)])
    behind = cursor_check(store, source_name)
    assert (behind.passed, behind.cursor, behind.highest) == (False, cursor, 60)


def test_quarantine_check_counts_the_items(store, source_name):
    store.ensure_source(source_name)
    assert quarantine_check(store, source_name).passed
    store.quarantine(source_name, [Quarantined(b"<html>", "body is not JSON")])
    found = quarantine_check(store, source_name)
    assert (found.passed, found.quarantined, found.last_reason) == (False, 1, "body is not JSON")
