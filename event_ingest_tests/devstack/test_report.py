"""The reports alone, from a StackView: stack.json for the other commands, the summary for people."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from event_ingest.config import DATABASE_URL_ENV, REDIS_URL_ENV, SOURCES_ENV
from event_ingest.devstack.child import Child
from event_ingest.devstack.report import StackView, stack_document, summary
from event_ingest.devstack.services import ServiceUrls
from event_ingest.devstack.sources import SourcesPlan

STATE = Path("/state")
GIVEN = ServiceUrls(
    "postgresql://u:secret@db:5432/events",
    "postgresql+psycopg2://u:secret@db:5432/events",
    "redis://cache:6379/0",
    from_env=frozenset({DATABASE_URL_ENV, REDIS_URL_ENV}),
)
URLS = {"source1": "http://127.0.0.1:3001/events", "source2": "http://127.0.0.1:3002/events"}


@pytest.fixture
def exited() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc


def view(**overrides) -> StackView:
    fields = {
        "state_dir": STATE,
        "stack_file": STATE / "stack.json",
        "logs_dir": STATE / "logs",
        "started_at": 0.0,
        "services": GIVEN,
        "sources": SourcesPlan(STATE / "sources.yaml", URLS, mock=False, generated=True, from_env=False),
        **overrides,
    }
    return StackView(**fields)


def test_summary_hides_what_came_from_the_environment():
    sources = SourcesPlan(Path("/mine.yaml"), URLS, mock=False, generated=False, from_env=True)
    text = summary(view(sources=sources), ready_in_s=1.234)
    assert "event-ingest dev is running (ready in 1.2s)" in text
    assert "postgresql://u:***@db:5432/events  (from $EVENT_INGEST_DATABASE_URL)" in text
    assert "redis://cache:6379/0  (from $EVENT_INGEST_REDIS_URL)" in text
    assert "secret" not in text and "Dagster UI" not in text and "export" not in text
    for name in (DATABASE_URL_ENV, REDIS_URL_ENV, SOURCES_ENV):
        assert f"  # {name}: as set in your environment" in text
    assert "    source1     http://127.0.0.1:3001/events\n" in text  # a given file's source: no note


def test_summary_notes_each_source(exited):
    mock = Child("source1", exited, STATE / "logs" / "mock-source1.log", url=URLS["source1"])
    mock.extra = {"events_per_response": 3, "error_rate": 0.2}
    text = summary(view(services=ServiceUrls("postgresql://p@h/e", "", "redis://r/0"), mock_children=(mock,)), 0)
    assert "source1     http://127.0.0.1:3001/events  (mock, 3 events per response, 20% errors)" in text
    assert "source2     http://127.0.0.1:3002/events  (not started: --no-mock-sources)" in text
    assert f"export {SOURCES_ENV}=/state/sources.yaml" in text and f"export {REDIS_URL_ENV}=redis://r/0" in text
    assert "logs          /state/logs/  (mock-source1.log)" in text


def test_summary_says_when_the_ui_does_not_answer_yet(exited):
    dagster = Child("dagster", exited, STATE / "logs" / "dagster.log", url="http://127.0.0.1:3000")
    assert "Dagster UI    http://127.0.0.1:3000  (not answering yet)" in summary(view(dagster=dagster), 0)
    answered = view(dagster=dagster, timings={"ui_ready_s": 12.5})
    assert "Dagster UI    http://127.0.0.1:3000\n" in summary(answered, 0)


def test_stack_document(exited):
    dagster = Child("dagster", exited, STATE / "logs" / "dagster.log", 42, "http://127.0.0.1:3000", {"home": "/h"})
    doc = stack_document(view(dagster=dagster, ready=False, timings={"services_ready_s": 1.5}))
    assert doc["pid"] == os.getpid() and doc["started_at"] == "1970-01-01T00:00:00+00:00"
    assert doc["ready"] is False and doc["state_dir"] == "/state"
    assert doc["env"] == {
        DATABASE_URL_ENV: GIVEN.database_url,
        REDIS_URL_ENV: GIVEN.redis_url,
        SOURCES_ENV: "/state/sources.yaml",
    }
    assert doc["postgres"] == {
        "url": GIVEN.database_url,
        "dagster_url": GIVEN.dagster_database_url,
        "embedded": False,
        "pid": None,
        "log": None,
    }
    assert doc["redis"] == {"url": GIVEN.redis_url, "embedded": False, "pid": None, "log": None}
    assert doc["sources"] == {"file": "/state/sources.yaml", "mock": False, "urls": URLS, "children": []}
    assert doc["dagster"] == {
        "name": "dagster",
        "pid": exited.pid,
        "start_time": 42,
        "url": "http://127.0.0.1:3000",
        "log": "/state/logs/dagster.log",
        "home": "/h",
    }
    assert doc["timings"] == {"services_ready_s": 1.5}
