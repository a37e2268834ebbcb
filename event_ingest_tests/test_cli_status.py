"""`event-ingest status`, `status --check` and `recount`: what an operator reads, and the one repair it names."""

from __future__ import annotations

import json

from event_ingest.config import with_database
from event_ingest.core.page import Event
from event_ingest.core.store.schema import SCHEMA_VERSION
from event_ingest_tests.clirun import cli, environment


def test_status_reads_only_works_without_redis_and_shows_removed_sources(
    tmp_path, make_mock, database_url, redis_url, redis_client, source_name
):
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    from event_ingest.core import Lease

    kept, gone = make_mock(backlog=30), make_mock(backlog=5)
    removed = f"{source_name}_gone"
    both = (
        f"sources:\n  - name: {source_name}\n    url: {kept.url}\n    timeout_s: 1\n"
        f"  - name: {removed}\n    url: {gone.url}\n    timeout_s: 1\n"
    )
    env = environment(tmp_path, database_url, redis_url, both)
    for name in (source_name, removed):
        assert cli("ingest", name, env=env).returncode == 0
    (tmp_path / "sources.yaml").write_text(f"sources:\n  - name: {source_name}\n    url: {kept.url}\n")

    # A role that may read and nothing else: any write or schema change by status would fail.
    role = f"ro_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        state_before = conn.execute("SELECT * FROM source_state ORDER BY source").fetchall()
    parts = urlsplit(database_url)
    env["EVENT_INGEST_DATABASE_URL"] = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    try:
        with Lease(redis_client, source_name, ttl_s=30) as lease:  # a drain holds the source now
            assert lease.acquire()
            done = cli("status", "--json", env=env)
            table = cli("status", env=env)
        assert done.returncode == 0, done.stderr
        rows = {r["source"]: r for r in json.loads(done.stdout)}
        row = rows[source_name]
        assert (row["cursor"], row["events"], row["lease"], row["config"], row["stuck"]) == (
            30,
            30,
            True,
            "configured",
            False,
        )
        assert row["requests"] == kept.stats()["requests"] and row["errors"] == 0 and row["error_rate"] == 0
        assert row["lag_s"] is not None and row["last_commit"] is not None
        assert (rows[removed]["config"], rows[removed]["events"], rows[removed]["lease"]) == ("removed", 5, False)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == [
            "source",
            "cursor",
            "events",
            "gaps",
            "lag_s",
            "last_commit",
            "error_rate",
            "quarantined",
            "fenced",
            "lease",
            "stuck",
            "config",
        ]
        # (The session's database holds other tests' sources too: they show as removed, maybe as renames.)
        assert next(line for line in lines if line.startswith(removed)).split()[9:12] == ["free", "no", "removed"]
        assert next(line for line in lines if line.startswith(f"{source_name} ")).split()[9:12] == [
            "held",
            "no",
            "configured",
        ]

        # Redis down or not configured: the lease is unknown, everything else is there.
        for redis_env in ("redis://127.0.0.1:1/0", None):
            if redis_env is None:
                env.pop("EVENT_INGEST_REDIS_URL")
            else:
                env["EVENT_INGEST_REDIS_URL"] = redis_env
            done = cli("status", "--json", env=env)
            assert done.returncode == 0, done.stderr
            row = next(r for r in json.loads(done.stdout) if r["source"] == source_name)
            assert (row["cursor"], row["lease"]) == (30, None)
            assert "lease unknown (?)" in done.stderr
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert conn.execute("SELECT * FROM source_state ORDER BY source").fetchall() == state_before
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def test_status_on_a_database_without_the_tables_changes_nothing(tmp_path, postgres_server_url, redis_url):
    import uuid

    import psycopg

    dbname = f"event_ingest_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        url = with_database(postgres_server_url, dbname)
        env = environment(tmp_path, url, redis_url, "sources:\n  - name: s1\n    url: http://127.0.0.1:1/e\n")
        done = cli("status", env=env)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            "event-ingest: the database holds no event-ingest tables, this event-ingest reads version "
            f"{SCHEMA_VERSION}; nothing changed (the schema is made and upgraded by ingest runs and by the "
            "commands that write, e.g. `event-ingest ingest`)"
        ]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def commit_one(store, source, event_id):
    """A page of one event through the fenced commit: the source counts as polled now."""
    store.ensure_source(source)
    epoch, cursor = store.begin_epoch(source)
    store.commit_page(source, epoch=epoch, old_cursor=cursor, new_cursor=event_id, events=[Event(event_id, "{}")])


def test_status_check_exits_1_with_one_line_per_late_source(tmp_path, database_url, store, source_name):
    fresh, stale, never = f"{source_name}_fresh", f"{source_name}_stale", f"{source_name}_never"
    for name in (fresh, stale):
        commit_one(store, name, 1)
    # The stale one was last polled two minutes ago (as if nothing had hosted it since).
    store.conn.execute(
        "UPDATE source_state SET last_ingest_at = now() - interval '120 s', last_poll_at = now() - interval '120 s' "
        "WHERE source = %s",
        (stale,),
    )
    store.conn.commit()
    url = "http://127.0.0.1:1/events"
    every = (
        f"sources:\n  - name: {fresh}\n    url: {url}\n  - name: {stale}\n    url: {url}\n"
        f"  - name: {never}\n    url: {url}\n    max_lag_s: 45\n"
    )
    # Postgres alone: no Redis URL in the environment.
    env = {k: v for k, v in environment(tmp_path, database_url, "", every).items() if k != "EVENT_INGEST_REDIS_URL"}
    late = cli("status", "--check", env=env)
    assert (late.returncode, late.stderr) == (1, ""), late.stderr
    [first, second] = late.stdout.splitlines()
    assert first.startswith(f"{stale}: late: last successful poll 12") and first.endswith(" s ago (max_lag_s 30)")
    assert second == f"{never}: late: never polled successfully (max_lag_s 45)"

    (tmp_path / "sources.yaml").write_text(f"sources:\n  - name: {fresh}\n    url: {url}\n")
    ok = cli("status", "--check", env=env)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")

    (tmp_path / "sources.yaml").write_text(f"sources:\n  - name: {fresh}\n    url: {url}\n    max_lag_s: 0\n")
    bad = cli("status", "--check", env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "max_lag_s" in bad.stderr
    env["EVENT_INGEST_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/none"
    (tmp_path / "sources.yaml").write_text(f"sources:\n  - name: {fresh}\n    url: {url}\n")
    down = cli("status", "--check", env=env)
    assert down.returncode == 2 and down.stderr.startswith("event-ingest: cannot connect to Postgres")


def test_recount_repairs_the_drift_the_checks_name(tmp_path, database_url, store, source_name):
    from event_ingest.core.checks import gap_check

    store.ensure_source(source_name)
    epoch, _ = store.begin_epoch(source_name)
    store.commit_page(
        source_name, epoch=epoch, old_cursor=0, new_cursor=50, events=[Event(i, "{}") for i in range(1, 51)]
    )
    store.conn.execute("SET session_replication_role = replica")  # the triggers do not see this delete
    store.conn.execute("DELETE FROM events WHERE source = %s AND event_id = 25", (source_name,))
    store.conn.execute("RESET session_replication_role")
    store.conn.commit()
    assert gap_check(store, source_name).passed  # the hidden gap
    assert store.verify_counters(source_name).drift
    env = environment(tmp_path, database_url, "", f"sources:\n  - name: {source_name}\n    url: http://h/e\n")
    drift_line = (
        f"{source_name}: counters disagree with the rows in blocks 0 (ids 0-65535: counted 50, rows 49); "
        f"run `event-ingest recount {source_name}`"
    )
    assert drift_line in cli("status", env=env).stdout.splitlines()

    done = cli("recount", source_name, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"source {source_name}: counters rebuilt from the rows; 1 blocks corrected (block 0: 50 -> 49); events 50 -> 49"
    )
    assert drift_line not in cli("status", env=env).stdout
    found = gap_check(store, source_name)
    assert (found.missing, found.listed) == (1, "25-25")
    again = cli("recount", source_name, "--json", env=env)
    assert json.loads(again.stdout)["changed"] == []
    unknown = cli("recount", f"{source_name}_nope", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == f"event-ingest: refused: source '{source_name}_nope' has no state; nothing done"
