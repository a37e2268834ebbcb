"""`event-ingest dev --no-dagster` for real, as a user runs it: a subprocess with no EVENT_INGEST_*
URLs set, so it starts its own Postgres and Redis and the mock sources; then Ctrl-C (SIGINT), after
which not one of its processes may be left. With Dagster: test_dev_dagster.py; the parts alone:
test_statedir.py, test_sources.py, test_services.py, test_mockfleet.py, test_report.py, ..."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import redis

from .devproc import ENV_VARS, SOURCES, bindable, free_port_base, process_tree, status_json, still_running


def test_no_dagster_starts_services_and_sources(dev, tmp_path):
    base = free_port_base()
    d = dev("--no-dagster", "--sources-port-base", str(base))
    stack = d.stack(timeout=60, ready=True)

    assert stack["dagster"] is None
    assert not (d.state_dir / "dagster_home").exists()
    urls = {name: f"http://127.0.0.1:{base + i}/events" for i, name in enumerate(SOURCES)}
    assert stack["sources"]["urls"] == urls
    sources_file = Path(stack["env"]["EVENT_INGEST_SOURCES"])
    assert sources_file.parent == d.state_dir
    for name, url in urls.items():
        assert f"name: {name}" in sources_file.read_text() and f"url: {url}" in sources_file.read_text()

    # The mock sources behave like the original system's: 3, 2 and 4 new events per answer.
    for (name, url), batch in zip(urls.items(), (3, 2, 4)):
        for _ in range(50):  # 20% of answers are injected 500s
            r = httpx.get(url, params={"lastId": 10}, timeout=5)
            if r.status_code == 200:
                break
        assert [e["id"] for e in r.json()["events"]] == list(range(11, 11 + batch)), name

    assert redis.Redis.from_url(stack["redis"]["url"]).ping()
    assert [(r["source"], r["cursor"]) for r in status_json(stack["env"])] == [(s, 0) for s in SOURCES]
    assert stack["postgres"]["dagster_url"].startswith("postgresql+psycopg2://")

    # One dev stack per state dir.
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "event_ingest.cli",
            "dev",
            "--no-dagster",
            "--data-dir",
            str(d.state_dir),
            "--sources-port-base",
            str(free_port_base()),
        ],
        env={k: v for k, v in os.environ.items() if k not in ENV_VARS},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2 and f"another dev stack (pid {d.proc.pid})" in second.stderr, second.stderr
    assert (d.state_dir / "stack.json").exists()  # the refused one did not touch the running one's

    tree = process_tree(d.proc.pid)
    assert len(tree) >= 5, tree  # postgres (and its workers), valkey, 3 sources
    assert d.interrupt(timeout=30) == 0, d.tail()
    left = still_running(tree)
    assert not left, "processes left after Ctrl-C:\n" + "\n".join(left)
    assert not (d.state_dir / "stack.json").exists()


def test_a_restart_resumes_on_the_same_state(dev, tmp_path):
    base = free_port_base()
    first = dev("--no-dagster", "--sources-port-base", str(base))
    stack = first.stack(timeout=60, ready=True)
    with psycopg.connect(stack["postgres"]["url"], autocommit=True) as conn:
        conn.execute("UPDATE source_state SET cursor = 41 WHERE source = 'source2'")
    redis.Redis.from_url(stack["redis"]["url"]).set("dev-test-marker", "kept")
    assert first.interrupt(timeout=30, sig=signal.SIGTERM) == 0, first.tail()  # SIGTERM stops it cleanly too

    second = dev("--no-dagster", "--sources-port-base", str(base))
    again = second.stack(timeout=60, ready=True)
    assert again["postgres"]["url"] == stack["postgres"]["url"]  # the remembered port
    assert {r["source"]: r["cursor"] for r in status_json(again["env"])}["source2"] == 41
    # Postgres keeps the state; Redis is not persisted, as the README advises (leases and gate slots only).
    restarted = redis.Redis.from_url(again["redis"]["url"])
    assert restarted.get("dev-test-marker") is None
    assert restarted.config_get("appendonly") == {"appendonly": "no"} and restarted.config_get("save")["save"] == ""
    assert second.interrupt(timeout=30) == 0, second.tail()


def test_no_mock_sources_still_lists_them_for_you_to_serve(dev, tmp_path):
    base = free_port_base()
    d = dev("--no-dagster", "--no-mock-sources", "--sources-port-base", str(base))
    stack = d.stack(timeout=60, ready=True)
    assert stack["sources"]["children"] == [] and not stack["sources"]["mock"]
    assert stack["sources"]["urls"]["source1"] == f"http://127.0.0.1:{base}/events"
    assert bindable(base)  # nothing of ours listens there
    assert d.interrupt(timeout=30) == 0, d.tail()


def test_a_dying_child_stops_everything_and_says_which(dev, tmp_path):
    d = dev("--no-dagster", "--sources-port-base", str(free_port_base()))
    stack = d.stack(timeout=60, ready=True)
    victim = next(c for c in stack["sources"]["children"] if c["name"] == "source2")
    tree = process_tree(d.proc.pid)

    os.kill(victim["pid"], signal.SIGKILL)
    assert d.proc.wait(30) == 1, d.tail()
    assert "mock source source2 exited unexpectedly" in d.output and victim["log"] in d.output, d.tail()
    left = still_running(tree)
    assert not left, "processes left:\n" + "\n".join(left)


def test_a_taken_port_fails_at_once_naming_it(dev, tmp_path):
    base = free_port_base()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        d = dev("--no-dagster", "--sources-port-base", str(base))
        assert d.proc.wait(30) == 2, d.tail()
    errors = [line for line in d.output.splitlines() if str(base + 1) in line]
    assert errors and "already in use" in errors[0] and "--sources-port-base" in errors[0], d.tail()
    assert not (d.state_dir / "postgres").exists()  # failed before starting anything
