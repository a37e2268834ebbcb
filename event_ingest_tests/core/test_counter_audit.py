"""The counter audit: counters that disagree with the rows (writes that bypassed the triggers) are found
within the stated bound, reported by the checks, and repaired by the recount."""

from __future__ import annotations

import math

from event_ingest.core.checks import gap_check, verify_counters
from event_ingest.core.page import Event
from event_ingest.core.status import read_status
from event_ingest.core.store import Store
from event_ingest.core.store.schema import partition_name
from event_ingest_tests.core.test_checks import ranges, sql, store_ids


def bypassing_triggers(store, statement, params=()):
    """A write the counting triggers never see (as pg_restore --disable-triggers or a logical replica)."""
    store.conn.execute("SET session_replication_role = replica")
    store.conn.execute(statement, params)
    store.conn.execute("RESET session_replication_role")
    store.conn.commit()


def audit_round(store, source, blocks):
    """Calls of the audit, each from a fresh Store (the position lives in Postgres, not in a process)."""
    with Store(store.url) as other:
        return other.verify_counters(source, blocks=blocks)


def test_drift_is_found_within_a_round_reported_and_repaired(store, source_name):
    store_ids(store, source_name, range(1, 140_001))  # blocks 0, 1 and 2
    # Behind the triggers' back, event 70,000 goes (block 1).
    bypassing_triggers(store, "DELETE FROM events WHERE source = %s AND event_id = 70000", (source_name,))
    assert gap_check(store, source_name).passed  # the hazard: a real gap, and the counters' sum hides it
    assert store.counter_drift(source_name) is None

    # One block per call: the three blocks are verified within ceil(3 / 1) = 3 calls.
    audits = [audit_round(store, source_name, blocks=1) for _ in range(3)]
    assert [a.checked for a in audits] == [(0,), (1,), (2,)]
    assert [(d.block, d.counted, d.rows) for d in audits[-1].drift] == [(1, 65_536, 65_535)]
    found = gap_check(store, source_name)
    assert not found.passed and found.missing == 0  # the counters still add up: the audit's record fails it
    assert found.summary() == (
        "counters disagree with the rows in blocks 1 (ids 65536-131071: counted 65536, rows 65535); "
        f"run `event-ingest recount {source_name}`"
    )
    [row] = [r for r in read_status(store, [source_name]).rows if r.source == source_name]
    assert row.counter_drift == found.summary()

    repaired = store.recount(source_name)
    assert [(b.block, b.counted, b.rows) for b in repaired.changed] == [(1, 65_536, 65_535)]
    assert (repaired.events_before, repaired.events_after) == (140_000, 139_999)
    assert store.counter_drift(source_name) is None
    truth = gap_check(store, source_name)
    assert (truth.passed, truth.missing, ranges(truth)) == (False, 1, [(70_000, 70_000)])  # the real gap, shown
    assert store.source_status(source_name).events == 139_999

    # A row inserted behind the triggers' back (block 2): the counters call it missing; the audit says why.
    bypassing_triggers(
        store, "INSERT INTO events (source, event_id, payload) VALUES (%s, 140001, '{}')", (source_name,)
    )
    assert "run `event-ingest recount" in gap_check(store, source_name).summary()
    drift = [audit_round(store, source_name, blocks=2) for _ in range(2)][-1].drift
    assert [(d.block, d.counted, d.rows) for d in drift] == [(2, 8_929, 8_930)]
    assert store.recount(source_name).events_after == 140_000
    assert ranges(gap_check(store, source_name)) == [(70_000, 70_000)]
    assert not any(a.drift for a in (audit_round(store, source_name, blocks=2) for _ in range(2)))


def test_the_audit_goes_round_every_block_within_its_bound(store, source_name):
    # Blocks far apart (the audit steps over empty stretches by index), one that only a counter
    # remembers (its row deleted behind the triggers) and one only a row holds (inserted behind them).
    ids = [1, 3 << 16, (10 << 16) + 5, 11 << 16, 500 << 16, (1 << 20) << 16, 1 << 62]
    store_ids(store, source_name, ids)
    bypassing_triggers(store, "DELETE FROM events WHERE source = %s AND event_id = %s", (source_name, 11 << 16))
    bypassing_triggers(
        store, "INSERT INTO events (source, event_id, payload) VALUES (%s, %s, '{}')", (source_name, 7 << 16)
    )
    blocks = sorted({i >> 16 for i in ids} | {7})
    per_call = 3
    bound = math.ceil(len(blocks) / per_call)  # 8 blocks, 3 per call: every block within 3 calls
    calls = [audit_round(store, source_name, blocks=per_call) for _ in range(3 * bound)]
    assert all(len(c.checked) == per_call for c in calls)
    for start in range(len(calls) - bound + 1):  # any `bound` consecutive calls verify every block
        assert sorted({b for c in calls[start : start + bound] for b in c.checked}) == blocks, start
    assert sum(c.wrapped for c in calls) >= 2
    assert [(d.block, d.counted, d.rows) for d in calls[-1].drift] == [(7, 0, 1), (11, 1, 0)]
    # The schedule's entry point: every source given, each its own result.
    results = verify_counters(store, [source_name, "t_never_seen_here"], blocks=len(blocks))
    assert sorted(results[source_name].checked) == blocks and results["t_never_seen_here"].checked == ()


def test_counters_agree_with_the_rows_after_every_kind_of_write(store, source_name):
    """What the triggers must count: COPY and INSERT pages, UPDATE, DELETE through the parent and through
    the partition, TRUNCATE. The audit recounts the rows and finds nothing to correct."""
    store_ids(store, source_name, range(1, 70_001), page=7_000)  # COPY
    epoch, _ = store.begin_epoch(source_name)
    store.rewind(source_name, 60_000)
    epoch, cursor = store.begin_epoch(source_name)
    replayed = [Event(i, "{}") for i in range(59_990, 70_011)]  # INSERT ... ON CONFLICT and COPY in one page
    store.commit_page(source_name, epoch=epoch, old_cursor=cursor, new_cursor=70_010, events=replayed)
    sql(store, "UPDATE events SET event_id = 140000 WHERE source = %s AND event_id = 5", (source_name,))
    sql(store, "DELETE FROM events WHERE source = %s AND event_id BETWEEN 100 AND 199", (source_name,))
    sql(store, f"DELETE FROM {partition_name(source_name)} WHERE event_id BETWEEN 65530 AND 65540")
    audit = store.verify_counters(source_name, blocks=8)
    assert audit.checked == (0, 1, 2) and audit.drift == (), audit.summary()
    assert store.source_status(source_name).events == 70_010 - 100 - 11
    assert sum(n for _, n in store.recent_minutes(source_name)) == 70_010 - 100 - 11
    assert store.recount(source_name).changed == ()
    sql(store, f"TRUNCATE {partition_name(source_name)}")
    assert store.verify_counters(source_name).checked == () and store.source_status(source_name).events == 0
