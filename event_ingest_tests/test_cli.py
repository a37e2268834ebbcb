"""The `event-ingest` command as a user runs it: real processes, real services."""

from __future__ import annotations

import json
import subprocess
import sys

from event_ingest_tests.clirun import cli, environment


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


def test_errors_become_exit_codes_in_one_place():
    """Commands raise; main() maps the exception's type to the exit code and one line (cli/main.py)."""
    from event_ingest.cli.main import exit_for
    from event_ingest.config import ConfigError
    from event_ingest.core import RedisUnavailable, StoreError
    from event_ingest.core.quarantine import QuarantineRefused, RequeueFailed
    from event_ingest.core.replay import ReplayRefused
    from event_ingest.core.skip import SkipFailed, SkipRefused

    assert exit_for(ConfigError("sources.yaml: bad"), None) == (2, "event-ingest: sources.yaml: bad")
    assert exit_for(RedisUnavailable("no redis"), "skip") == (2, "event-ingest: no redis")
    for refusal in (SkipRefused, ReplayRefused, QuarantineRefused):
        assert exit_for(refusal("not now"), "skip") == (2, "event-ingest: refused: not now")
    assert exit_for(SkipFailed("fenced"), "skip") == (1, "event-ingest: skip failed: fenced")
    assert exit_for(RequeueFailed("fenced"), "requeue") == (1, "event-ingest: requeue failed: fenced")
    # A store error in the middle of a command's writes is the work failing; in a command that reads,
    # Postgres could not answer.
    assert exit_for(StoreError("gone"), "recount") == (1, "event-ingest: recount failed: gone")
    assert exit_for(StoreError("gone"), None) == (2, "event-ingest: gone")
    assert exit_for(ValueError("a bug"), "recount") is None  # keeps its traceback
