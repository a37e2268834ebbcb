"""The `event-ingest` command as a user runs it: real processes, real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "event_ingest.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def environment(tmp_path, database_url, redis_url, sources_text):
    sources = tmp_path / "sources.yaml"
    sources.write_text(sources_text)
    return {**os.environ, "EVENT_INGEST_SOURCES": str(sources), "EVENT_INGEST_DATABASE_URL": database_url,
            "EVENT_INGEST_REDIS_URL": redis_url}


def test_ingest_then_status(tmp_path, make_mock, database_url, redis_url, source_name):
    mock = make_mock(backlog=250, error_rate=0.2, random_seed=3)
    env = environment(tmp_path, database_url, redis_url,
                      f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    page_size: 100\n    timeout_s: 1\n")
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


def test_bad_config_is_one_line_and_exit_2(tmp_path, database_url, redis_url):
    env = environment(tmp_path, database_url, redis_url,
                      "sources:\n  - name: s1\n    url: http://127.0.0.1:1/events\n    min_interval_ms: 100\n")
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


def test_a_source_that_keeps_failing_exits_1_with_the_reason(tmp_path, make_mock, database_url, redis_url,
                                                            source_name):
    mock = make_mock(backlog=5, error_rate=1.0)
    env = environment(tmp_path, database_url, redis_url,
                      f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    timeout_s: 0.5\n"
                      "    max_attempts: 2\n")
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


def test_a_missing_header_variable_is_one_line_naming_file_source_header_and_variable(tmp_path, database_url,
                                                                                       redis_url):
    env = environment(tmp_path, database_url, redis_url,
                      "sources:\n  - name: s1\n    url: https://127.0.0.1:1/e\n"
                      "    headers:\n      Authorization: {env: EVENT_INGEST_TEST_UNSET_TOKEN}\n")
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
    env = environment(tmp_path, database_url, redis_url,
                      f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    timeout_s: 1\n"
                      "    headers: {X-Token: {env: EVENT_INGEST_TEST_TOKEN}}\n")
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
    env = environment(tmp_path, database_url, redis_url,
                      f"sources:\n  - name: {source_name}\n    url: {mock.url}\n    timeout_s: 1\n")
    stuck = cli("ingest", source_name, "--json", env=env)
    assert stuck.returncode == 0 and json.loads(stuck.stdout)["cursor_after"] == 1, stuck.stdout + stuck.stderr
    assert "has no readable id" in stuck.stderr and "`event-ingest skip` moves past it" in stuck.stderr

    refused = cli("skip", source_name, "--to-id", "1", env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"event-ingest: refused: source {source_name!r}: --to-id 1 is not above the cursor 1; nothing done "
        "(skip only moves forward; the events at or below the cursor are already accounted for)"]

    done = cli("skip", source_name, "--to-id", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"source {source_name}: cursor moved 1 -> 2 (epoch ")
    assert f"the page served at lastId=1 ({len(bad) + 14} bytes, 1 items) is kept in quarantine" in done.stdout
    flowing = cli("ingest", source_name, "--json", env=env)
    stats = json.loads(flowing.stdout)
    assert (stats["status"], stats["events_stored"], stats["cursor_after"]) == ("caught_up", 2, 4)
    row = next(r for r in json.loads(cli("status", "--json", env=env).stdout) if r["source"] == source_name)
    assert (row["cursor"], row["events"], row["quarantined"]) == (4, 3, 2)
