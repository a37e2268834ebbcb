"""The `event-ingest` command as a user runs it: real processes, real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from event_ingest.config import with_database
from event_ingest.core.page import Event
from event_ingest.core.store import SCHEMA_VERSION


def cli(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def environment(tmp_path, database_url, redis_url, sources_text):
    sources = tmp_path / "sources.yaml"
    sources.write_text(sources_text)
    return {
        **os.environ,
        "EVENT_INGEST_SOURCES": str(sources),
        "EVENT_INGEST_DATABASE_URL": database_url,
        "EVENT_INGEST_REDIS_URL": redis_url,
    }


def test_ingest_then_status(tmp_path, make_mock, database_url, redis_url, source_name):
    mock = make_mock(backlog=250, error_rate=0.2, random_seed=3)
    env = environment(
        tmp_path,
        database_url,
        redis_url,
        f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    page_size: 100\n    timeout_s: 1\n",
    )
    done = cli("ingest", source_name, "--json", env=env)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["status"] == "caught_up" and stats["events_stored"] == 250 and stats["cursor_after"] == 250
    status = cli("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    row = next(r for r in json.loads(status.stdout) if r["source"] == source_name)
    assert (row["cursor"], row["events"], row["gaps"], row["quarantined"]) == (250, 250, 0, 0)
    table = cli("status", env=env)
    assert table.stdout.splitlines()[0].split()[:4] == ["source", "cursor", "events", "gaps"]
    assert any(line.startswith(source_name) for line in table.stdout.splitlines())


def test_status_counts_every_missing_id(tmp_path, make_mock, database_url, redis_url, source_name):
    """More gap ranges than any list shows: status counts every missing id, not the first ranges' worth."""
    served = range(1, 276, 2)  # 2, 4, ..., 274 missing: 137 ranges of one id
    mock = make_mock(backlog=0)
    mock.control({"next": [{"kind": "events", "events": [{"id": i, "payload": i} for i in served], "record": True}]})
    env = environment(
        tmp_path, database_url, redis_url, f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    timeout_s: 1\n"
    )
    done = cli("ingest", source_name, "--json", env=env)
    assert done.returncode == 0, done.stderr
    status = cli("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    row = next(r for r in json.loads(status.stdout) if r["source"] == source_name)
    assert (row["cursor"], row["events"], row["gaps"]) == (275, 138, 137)


def test_bad_config_is_one_line_and_exit_2(tmp_path, database_url, redis_url):
    env = environment(
        tmp_path,
        database_url,
        redis_url,
        "sources:\n  - name: s1\n    url: http://127.0.0.1:1/events\n    min_interval_ms: 100\n",
    )
    done = cli("ingest", "s1", env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "sources.yaml: source 's1': field 'min_interval_ms': 100" in lines[0]


def test_unknown_source_names_the_configured_ones(tmp_path, database_url, redis_url):
    env = environment(tmp_path, database_url, redis_url, "sources:\n  - name: s1\n    url: http://127.0.0.1:1/e\n")
    done = cli("ingest", "nope", env=env)
    assert done.returncode == 2 and "source 'nope' is not configured (configured: s1)" in done.stderr


def test_unreachable_redis_and_postgres_are_one_clear_line(tmp_path, database_url, redis_url):
    text = "sources:\n  - name: s1\n    url: http://127.0.0.1:1/e\n"
    env = environment(tmp_path, database_url, "redis://127.0.0.1:1/0", text)
    done = cli("ingest", "s1", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in done.stderr
    env = environment(tmp_path, "postgresql://postgres@127.0.0.1:1/x", redis_url, text)
    done = cli("status", env=env)
    assert done.returncode == 2 and "cannot connect to Postgres at postgresql://postgres@127.0.0.1:1/x" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_source_that_keeps_failing_exits_1_with_the_reason(tmp_path, make_mock, database_url, redis_url, source_name):
    mock = make_mock(backlog=5, error_rate=1.0)
    env = environment(
        tmp_path,
        database_url,
        redis_url,
        f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    timeout_s: 0.5\n    max_attempts: 2\n",
    )
    done = cli("ingest", source_name, env=env)
    assert done.returncode == 1
    assert "source_error" in done.stdout and "2 attempts failed, last: HTTP 500" in done.stdout


def test_version_from_the_command_and_the_bootstrap():
    import importlib.metadata

    from event_ingest import __version__

    # The installed package's metadata comes from the same one place (pyproject reads __version__).
    assert importlib.metadata.version("event-ingest") == __version__
    for command in (["-m", "event_ingest.cli", "--version"], ["-m", "event_ingest", "--version"]):
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"event-ingest {__version__}", command


def test_a_missing_header_variable_is_one_line_naming_file_source_header_and_variable(
    tmp_path, database_url, redis_url
):
    env = environment(
        tmp_path,
        database_url,
        redis_url,
        "sources:\n  - name: s1\n    url: https://127.0.0.1:1/e\n"
        "    headers:\n      Authorization: {env: EVENT_INGEST_TEST_UNSET_TOKEN}\n",
    )
    env.pop("EVENT_INGEST_TEST_UNSET_TOKEN", None)
    done = cli("ingest", "s1", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"event-ingest: {tmp_path / 'sources.yaml'}: source 's1': field 'headers': header 'Authorization': "
        "environment variable EVENT_INGEST_TEST_UNSET_TOKEN is not set (it holds the header's value)"
    ]


def test_cli_output_never_shows_a_header_secret(tmp_path, make_mock, database_url, redis_url, source_name):
    secret = "cli-s3cr3t-7d2e9f0a"
    mock = make_mock(backlog=5)
    mock.control({"next": [{"kind": "status", "status": 403, "body": f"token {secret} revoked"}]})
    env = environment(
        tmp_path,
        database_url,
        redis_url,
        f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    timeout_s: 1\n"
        "    headers: {X-Token: {env: EVENT_INGEST_TEST_TOKEN}}\n",
    )
    env["EVENT_INGEST_TEST_TOKEN"] = secret
    for args in (["ingest", source_name], ["ingest", source_name, "--json"], ["-v", "status"]):
        done = cli(*args, env=env)
        assert secret not in done.stdout + done.stderr, args
    assert mock.stats()["last_request_headers"]["X-Token"] == secret
    assert mock.stats()["statuses"] == {"403": 1, "200": 2}


def test_skip_moves_a_stuck_source_and_says_what_it_did(tmp_path, make_mock, database_url, redis_url, source_name):
    import base64

    bad = b'{"id": 2' + b"0" * 5000 + b"}"
    page = {"kind": "body", "body_b64": base64.b64encode(b'{"events": [' + bad + b"]}").decode()}
    mock = make_mock(backlog=4)
    mock.control({"next": [{"kind": "events", "events": [{"id": 1}]}, page, page]})
    env = environment(
        tmp_path, database_url, redis_url, f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    timeout_s: 1\n"
    )
    stuck = cli("ingest", source_name, "--json", env=env)
    stats = json.loads(stuck.stdout)
    assert (stuck.returncode, stats["status"], stats["cursor_after"]) == (1, "stuck", 1), stuck.stdout + stuck.stderr
    assert f"`event-ingest skip {source_name} --to-id N`" in stats["error"]
    assert "has no readable id" in stuck.stderr and "`event-ingest skip` moves past it" in stuck.stderr

    refused = cli("skip", source_name, "--to-id", "1", env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"event-ingest: refused: source {source_name!r}: --to-id 1 is not above the cursor 1; nothing done "
        "(skip only moves forward; the events at or below the cursor are already accounted for)"
    ]

    done = cli("skip", source_name, "--to-id", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"source {source_name}: cursor moved 1 -> 2 (epoch ")
    assert f"the page served at lastId=1 ({len(bad) + 14} bytes, 1 items) is kept in quarantine" in done.stdout
    flowing = cli("ingest", source_name, "--json", env=env)
    stats = json.loads(flowing.stdout)
    assert (stats["status"], stats["events_stored"], stats["cursor_after"]) == ("caught_up", 2, 4)
    row = next(r for r in json.loads(cli("status", "--json", env=env).stdout) if r["source"] == source_name)
    assert (row["cursor"], row["events"], row["quarantined"]) == (4, 3, 2)


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


def test_replay_rewinds_and_the_next_ingest_reads_again_without_storing_twice(
    tmp_path, make_mock, database_url, redis_url, source_name
):
    mock = make_mock(backlog=30)
    env = environment(
        tmp_path,
        database_url,
        redis_url,
        f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    page_size: 10\n",
    )
    assert cli("ingest", source_name, env=env).returncode == 0
    done = cli("replay", source_name, "--from-id", "10", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"source {source_name}: cursor rewound 30 -> 10 (epoch ")
    again = json.loads(cli("ingest", source_name, "--json", env=env).stdout)
    assert (again["cursor_before"], again["cursor_after"], again["events_stored"], again["events_already_stored"]) == (
        10,
        30,
        0,
        20,
    )
    deleted = json.loads(cli("replay", source_name, "--from-id", "10", "--delete-from", "21", "--json", env=env).stdout)
    assert (deleted["cursor_after"], deleted["deleted"]) == (10, 10)
    row = next(r for r in json.loads(cli("status", "--json", env=env).stdout) if r["source"] == source_name)
    assert (row["cursor"], row["events"]) == (10, 20)
    again = json.loads(cli("ingest", source_name, "--json", env=env).stdout)
    assert (again["cursor_after"], again["events_stored"], again["events_already_stored"]) == (30, 10, 10)
    for args, message in [
        (["--from-id", "31"], "--from-id 31 is above the cursor 30; nothing done"),
        (["--from-id", "-3"], "--from-id -3 is not a cursor"),
        (["--from-id", "5", "--delete-from", "5"], "--delete-from 5 must be above --from-id 5"),
    ]:
        refused = cli("replay", source_name, *args, env=env)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert refused.stderr.startswith("event-ingest: refused: ") and message in refused.stderr
    unknown = cli("replay", "nope", "--from-id", "1", env=env)
    assert unknown.returncode == 2 and f"source 'nope' is not configured (configured: {source_name})" in unknown.stderr


def test_quarantine_list_show_requeue_and_discard(tmp_path, make_mock, database_url, redis_url, source_name):
    import base64

    # Item 2's bytes are not UTF-8 and carry a terminal escape: it is kept as served, with its id.
    bad = b'{"id": 2, "payload": "\xff\x1b[31mred"}'
    page = b'{"events": [{"id": 1, "payload": 1}, ' + bad + b', {"id": 3, "payload": 3}]}'
    mock = make_mock(backlog=4)
    mock.control({"next": [{"kind": "body", "body_b64": base64.b64encode(page).decode()}]})
    env = environment(
        tmp_path, database_url, redis_url, f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    timeout_s: 1\n"
    )
    assert cli("ingest", source_name, env=env).returncode == 0

    listed = json.loads(cli("quarantine", "list", source_name, "--json", env=env).stdout)
    [item] = listed
    assert (item["event_id"], item["state"], item["seen_count"], item["at_cursor"]) == (2, "open", 1, 0)
    assert "event 2 cannot be read: item is not valid UTF-8" in item["reason"]
    table = cli("quarantine", "list", source_name, env=env).stdout.splitlines()
    assert (
        table[0].split()[:4] == ["id", "source", "event_id", "state"] and table[-1] == "1 of 1 open items, newest first"
    )

    shown = cli("quarantine", "show", str(item["id"]), env=env)
    assert shown.returncode == 0 and '{"id": 2, "payload": "\\xff\\u001b[31mred"}' in shown.stdout
    assert "\x1b" not in shown.stdout  # nothing reaches the terminal unescaped
    raw = subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", "quarantine", "show", str(item["id"]), "--raw"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert raw.returncode == 0 and raw.stdout == bad

    refused = cli("quarantine", "requeue", str(item["id"]), env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"event-ingest: refused: quarantine item {item['id']} (source {source_name}): still cannot be stored: "
        "event 2 cannot be read: item is not valid UTF-8 (byte 22); nothing done"
    ]
    fixed = tmp_path / "fixed.json"
    fixed.write_text('{"id": 2, "payload": "red, fixed"}')
    done = cli("quarantine", "requeue", str(item["id"]), "--from-file", str(fixed), env=env)
    assert done.returncode == 0, done.stderr
    assert f"stored event 2 from the corrected item in {fixed}" in done.stdout
    row = next(r for r in json.loads(cli("status", "--json", env=env).stdout) if r["source"] == source_name)
    assert (row["cursor"], row["events"], row["gaps"], row["quarantined"]) == (4, 4, 0, 0)
    assert (
        cli("quarantine", "list", source_name, env=env).stdout.strip()
        == f"no open items in quarantine for source {source_name}"
    )
    again = cli("quarantine", "discard", str(item["id"]), env=env)
    assert again.returncode == 2 and f"quarantine item {item['id']} is requeued already" in again.stderr
    [requeued] = json.loads(cli("quarantine", "list", "--all", source_name, "--json", env=env).stdout)
    assert requeued["state"] == "requeued" and requeued["resolution_note"].startswith("requeued by an operator")
    missing = cli("quarantine", "show", "0", env=env)
    assert missing.returncode == 2 and missing.stderr.strip() == "event-ingest: quarantine item 0 does not exist"


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
