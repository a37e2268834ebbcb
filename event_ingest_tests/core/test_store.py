"""The store alone: schema and its upgrade, fenced commits (COPY and ON CONFLICT), quarantine, gaps, threads."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from event_ingest.config import with_database
from event_ingest.core.checks import gap_check
from event_ingest.core.page import Event, Quarantined
from event_ingest.core.store import Fenced, Store, StoreError
from event_ingest.core.store.commit import HOLD_FENCE_SQL, ONE_STATEMENT_MAX_EVENTS, store_page
from event_ingest.core.store.schema import SCHEMA_SQL, SCHEMA_VERSION, partition_name


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


# Both ways a page is committed carry the fence: a small page's one statement, a large page's transaction.
PAGE_SIZES = pytest.mark.parametrize("size", [2, ONE_STATEMENT_MAX_EVENTS + 1], ids=["one statement", "copy"])


@PAGE_SIZES
def test_a_commit_after_another_holder_bumped_the_epoch_is_refused(store, source_name, size):
    store.ensure_source(source_name)
    stale_epoch, _ = store.begin_epoch(source_name)
    new_epoch, _ = store.begin_epoch(source_name)  # another consumer took over
    assert new_epoch == stale_epoch + 1
    page = events(*range(1, size + 1))
    with pytest.raises(Fenced):
        store.commit_page(source_name, epoch=stale_epoch, old_cursor=0, new_cursor=size, events=page)
    assert store.event_ids(source_name) == []
    store.commit_page(source_name, epoch=new_epoch, old_cursor=0, new_cursor=size, events=page)
    status = store.source_status(source_name)
    assert status.cursor == size and status.fenced_commits == 1


@PAGE_SIZES
def test_a_commit_from_a_wrong_cursor_is_refused(store, source_name, size):
    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    page = events(*range(1, size + 1))
    store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=size, events=page)
    with pytest.raises(Fenced):
        store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=size, events=page)


@pytest.mark.parametrize("size", [3, ONE_STATEMENT_MAX_EVENTS + 1], ids=["one statement", "copy"])
def test_a_commit_writes_each_row_of_its_page_once(store, source_name, size):
    # The primary key would hide a page written twice (the second write conflicts and is skipped);
    # a row trigger on the source's partition sees every row a commit tries to write. Both ways a page
    # is committed: a small one in one statement, a larger one by COPY.
    store.ensure_source(source_name)
    audit = sql.Identifier(f"writes_{source_name}")
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (event_id bigint)").format(audit))
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN INSERT INTO {} VALUES (NEW.event_id); RETURN NEW; END $$"
            ).format(audit, audit)
        )
        conn.execute(
            sql.SQL("CREATE TRIGGER audit BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
                sql.Identifier(partition_name(source_name)), audit
            )
        )
        try:
            epoch, _ = store.begin_epoch(source_name)
            page = events(*range(1, size + 1))
            store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=size, events=page)
            written = [r[0] for r in conn.execute(sql.SQL("SELECT event_id FROM {} ORDER BY 1").format(audit))]
        finally:
            conn.execute(sql.SQL("DROP TRIGGER audit ON {}").format(sql.Identifier(partition_name(source_name))))
            conn.execute(sql.SQL("DROP FUNCTION {}()").format(audit))
            conn.execute(sql.SQL("DROP TABLE {}").format(audit))
    assert written == list(range(1, size + 1))


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
        source_name,
        epoch=epoch,
        old_cursor=0,
        new_cursor=9,
        events=events(1, 2, 5, 9),
        quarantined=[Quarantined(b'{"id": 6}', "payload too big", 6)],
    )
    gaps = [(g.first_missing, g.last_missing) for g in store.gaps(source_name)]
    assert gaps == [(3, 4), (7, 8)]


def test_unreachable_postgres_is_one_clear_error():
    with pytest.raises(StoreError, match=r"cannot connect to Postgres at postgresql://u:\*\*\*@127\.0\.0\.1:1/x"):
        Store("postgresql://u:secret@127.0.0.1:1/x", connect_timeout_s=1)


# ---- COPY above the highest stored id, ON CONFLICT at or below it ------------------------------

REWIND_SQL = "UPDATE source_state SET cursor = %s WHERE source = %s"


def count_rows(store, source):
    (n,) = store.conn.execute("SELECT count(*) FROM events WHERE source = %s", (source,)).fetchone()
    store.conn.rollback()
    return n


def test_a_page_above_the_highest_stored_id_goes_in_by_copy(store, source_name):
    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    result = store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=100, events=events(*range(1, 101)))
    assert (result.inserted, result.copied, result.already_stored) == (100, 100, 0)
    assert store.event_ids(source_name) == list(range(1, 101))


def test_a_replay_over_stored_events_stores_each_event_once(store, source_name):
    """A replay rewinds the cursor below stored events (a later feature will do it through the fence:
    a new epoch, a lower cursor); ids up to the highest stored one must skip, not collide."""
    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=100, events=events(*range(1, 101)))
    store.conn.execute(REWIND_SQL, (50, source_name))
    store.conn.commit()
    epoch, cursor = store.begin_epoch(source_name)
    assert cursor == 50
    result = store.commit_page(source_name, epoch=epoch, old_cursor=50, new_cursor=150, events=events(*range(51, 151)))
    assert (result.inserted, result.already_stored, result.copied) == (50, 50, 50)
    assert store.event_ids(source_name) == list(range(1, 151))
    status = store.source_status(source_name)
    assert (status.cursor, status.events) == (150, 150)  # the counters did not count the skipped ones


@pytest.mark.parametrize("extra", [0, ONE_STATEMENT_MAX_EVENTS], ids=["one statement", "copy"])
def test_ids_at_or_below_the_cursor_are_skipped_if_stored(store, source_name, extra):
    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=100, events=events(*range(1, 101)))
    # A source re-sending 95-100 next to new ids, and one id it never sent before (an old gap filled).
    store.conn.execute("DELETE FROM events WHERE source = %s AND event_id = 97", (source_name,))
    store.conn.commit()
    last = 105 + extra
    result = store.commit_page(
        source_name, epoch=epoch, old_cursor=100, new_cursor=last, events=events(*range(95, last + 1))
    )
    # A large page COPYs the ids above the highest stored one (5 + extra) and INSERTs the rest.
    assert (result.inserted, result.already_stored, result.copied) == (6 + extra, 5, 5 + extra if extra else 0)
    assert store.event_ids(source_name) == list(range(1, last + 1))
    assert count_rows(store, source_name) == store.source_status(source_name).events == last


def test_an_id_twice_in_one_page_is_stored_once(store, source_name):
    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    result = store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=2, events=events(1, 2, 1))
    assert (result.inserted, result.already_stored) == (2, 1)
    assert store.event_ids(source_name) == [1, 2]


# ---- a database made by the version 1 schema -----------------------------------------------------


@pytest.fixture
def fresh_database_url(postgres_server_url):
    name = f"event_ingest_upgrade_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(postgres_server_url, name)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_upgrade_from_the_version_1_schema_counts_the_rows_already_stored(fresh_database_url):
    """Users have data: tables, partitions and rows as version 1 left them (no counters, no triggers,
    events_per_minute holding what the old rollup wrote), then a consumer of this version starts."""
    source, other = "old_source", "old_other"
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute(SCHEMA_SQL)
        conn.execute("DROP TABLE schema_version")  # version 1 had none
        for name in (source, other):
            conn.execute(f"CREATE TABLE {partition_name(name)} PARTITION OF events FOR VALUES IN ('{name}')")
            conn.execute("INSERT INTO source_state (source, cursor) VALUES (%s, 70010)", (name,))
        conn.execute(
            """INSERT INTO events (source, event_id, payload, ingested_at)
                        SELECT %s, i, '{}', '2026-01-01 10:00:00+00'::timestamptz + (i / 1000) * interval '1 minute'
                        FROM generate_series(1, 70010) i WHERE i <> 500""",
            (source,),
        )
        conn.execute("INSERT INTO events (source, event_id, payload) VALUES (%s, 1, '{}')", (other,))
        conn.execute("INSERT INTO events_per_minute VALUES (%s, '2026-01-01 10:00:00+00', 3)", (source,))
    with Store(fresh_database_url) as store:
        store.apply_schema()
        store.apply_schema([source, other])  # again: nothing to do twice
        (version,) = store.conn.execute("SELECT version FROM schema_version").fetchone()
        minute_rows = store.conn.execute(
            "SELECT minute, events FROM events_per_minute WHERE source = %s ORDER BY minute", (source,)
        ).fetchall()
        store.conn.rollback()
        assert version == SCHEMA_VERSION
        status = store.source_status(source)
        assert (status.events, status.max_event_id) == (70_009, 70_010)
        assert store.source_status(other).events == 1
        assert len(minute_rows) == 71 and minute_rows[0][1] == 998 and sum(n for _, n in minute_rows) == 70_009
        found = gap_check(store, source)
        assert (found.missing, [(g.first_missing, g.last_missing) for g in found.gaps]) == (1, [(500, 500)])
        # The old partitions got their triggers: a DELETE now is counted, and new pages go in (and are counted).
        store.conn.execute("DELETE FROM events WHERE source = %s AND event_id = 70000", (source,))
        store.conn.commit()
        assert gap_check(store, source).missing == 2
        epoch, cursor = store.begin_epoch(source)
        last = 70_010 + ONE_STATEMENT_MAX_EVENTS + 10  # large enough to go by COPY
        result = store.commit_page(
            source, epoch=epoch, old_cursor=cursor, new_cursor=last, events=events(*range(70_011, last + 1))
        )
        assert result.copied == last - 70_010 and store.source_status(source).events == 70_008 + last - 70_010
        assert gap_check(store, source).missing == 2


# ---- one Store, many threads ---------------------------------------------------------------------


def backends(database_url, application_name):
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, wait_event_type FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchall()


def test_threads_commit_to_their_sources_at_once_through_one_store(database_url):
    app = f"pool-{uuid.uuid4().hex[:8]}"
    sources = [f"t_{uuid.uuid4().hex[:12]}" for _ in range(6)]
    errors = []

    def ingest(store, source):
        try:
            epoch, cursor = store.begin_epoch(source)
            for page in range(40):
                ids = range(cursor + 1, cursor + 51)
                if page == 20:
                    # Another holder takes over: this thread's next commit must roll back alone.
                    stale, (epoch, _) = epoch, store.begin_epoch(source)
                    with pytest.raises(Fenced):
                        store.commit_page(
                            source, epoch=stale, old_cursor=cursor, new_cursor=ids[-1], events=events(*ids)
                        )
                store.commit_page(source, epoch=epoch, old_cursor=cursor, new_cursor=ids[-1], events=events(*ids))
                cursor = ids[-1]
        except BaseException as exc:  # reported below, with the source it hit
            errors.append(f"{source}: {exc!r}")

    with Store(database_url, application_name=app, pool_size=4) as store:
        store.apply_schema(sources)
        threads = [threading.Thread(target=ingest, args=(store, s)) for s in sources]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in threads), "a thread hung"
        assert errors == []
        assert 1 <= len(backends(database_url, app)) <= 4
        for source in sources:
            status = store.source_status(source)
            assert store.event_ids(source) == list(range(1, 2001))
            assert (status.cursor, status.events, status.fenced_commits) == (2000, 2000, 1)


def run_in_thread(fn):
    done = threading.Event()
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc
        done.set()

    threading.Thread(target=target, daemon=True).start()
    return done, outcome


def wait_for(condition, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time (hung?)"
        time.sleep(0.05)


@pytest.mark.parametrize("pool_size", [1, 2])
def test_an_operation_waiting_on_a_lock_holds_one_connection_not_the_store(database_url, pool_size):
    app = f"pool-{uuid.uuid4().hex[:8]}"
    locked, free = f"t_{uuid.uuid4().hex[:12]}", f"t_{uuid.uuid4().hex[:12]}"
    with (
        Store(database_url, application_name=app, pool_size=pool_size) as store,
        psycopg.connect(database_url) as admin,
    ):
        store.apply_schema([locked, free])
        admin.execute("SELECT 1 FROM source_state WHERE source = %s FOR UPDATE", (locked,))
        try:
            blocked, _ = run_in_thread(lambda: store.begin_epoch(locked))
            wait_for(lambda: any(w == "Lock" for _, w in backends(database_url, app)))
            other, outcome = run_in_thread(lambda: store.begin_epoch(free))
            if pool_size == 1:
                # One connection, lent out: the second operation waits its turn, it does not share it.
                assert not other.wait(1.0)
            else:
                assert other.wait(60), "the second operation waited for the first one's connection"
                assert outcome == {"value": (1, 0)}
                assert not blocked.is_set()
        finally:
            admin.rollback()
        assert blocked.wait(60) and other.wait(60)
        assert store.source_status(locked).epoch == 1 and store.source_status(free).epoch == 1


def test_a_broken_connection_is_replaced_by_the_next_operation(database_url, store, source_name):
    store.ensure_source(source_name)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store.conn.info.backend_pid,))
    with pytest.raises(StoreError):
        store.begin_epoch(source_name)
    assert store.begin_epoch(source_name) == (1, 0)


def test_ids_stored_while_a_commit_waits_on_the_fence_are_not_copied_again(database_url, source_name):
    """The COPY/INSERT split reads the highest stored id after the fence's row lock is granted: a writer
    holding the fence (as a requeue does: the same row lock, events stored, the cursor unchanged) commits
    event 11 while this commit waits; the commit must see 11 stored and COPY only 12."""
    app = f"fence-{uuid.uuid4().hex[:8]}"
    with Store(database_url, application_name=app) as store, psycopg.connect(database_url) as holder:
        store.apply_schema([source_name])
        epoch, _ = store.begin_epoch(source_name)
        store.commit_page(source_name, epoch=epoch, old_cursor=0, new_cursor=10, events=events(*range(1, 11)))
        held = holder.execute(HOLD_FENCE_SQL, {"source": source_name, "epoch": epoch, "cursor": 10})
        assert held.rowcount == 1
        store_page(holder.cursor(), source_name, events(11), (), None)  # not committed yet
        page = events(*range(11, 12 + ONE_STATEMENT_MAX_EVENTS))  # large enough to go by COPY
        last = page[-1].id
        done, outcome = run_in_thread(
            lambda: store.commit_page(source_name, epoch=epoch, old_cursor=10, new_cursor=last, events=page)
        )
        wait_for(lambda: any(w == "Lock" for _, w in backends(database_url, app)))  # queued on the fence
        holder.commit()
        assert done.wait(60)
        assert "error" not in outcome, outcome.get("error")
        result = outcome["value"]
        fresh = last - 11
        assert (result.inserted, result.already_stored, result.copied) == (fresh, 1, fresh)
        assert store.event_ids(source_name) == list(range(1, last + 1))
