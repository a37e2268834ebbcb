"""DagsterDev's readiness alone, against a stand-in for the webserver's GraphQL API: settled once
the code location is loaded (then the runs an earlier session left running are canceled), or
once we gave up waiting."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from event_ingest.devstack.dagster_dev import UI_READY_TIMEOUT_S, DagsterDev
from event_ingest.devstack.procs import free_port
from event_ingest.devstack.runtime import Console, Interrupts


class FakeUI:
    """Answers the three operations DagsterUI sends; records what it was asked."""

    def __init__(self) -> None:
        self.load_status = "LOADING"
        self.stale = [{"runId": "0123456789abcdef", "status": "STARTED", "creationTime": 1.0}]
        self.asked: list[dict[str, Any]] = []

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(body)
        query = body["query"]
        if "workspaceOrError" in query:
            entry = {"name": "event_ingest", "loadStatus": self.load_status, "locationOrLoadError": {}}
            return {"data": {"workspaceOrError": {"locationEntries": [entry]}}}
        if "runsOrError" in query:
            return {"data": {"runsOrError": {"results": self.stale}}}
        return {"data": {"terminateRuns": {"__typename": "TerminateRunsResult"}}}


@pytest.fixture
def fake_ui() -> Iterator[tuple[FakeUI, int]]:
    ui = FakeUI()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = json.dumps(ui.answer(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ui, server.server_address[1]
    server.shutdown()
    server.server_close()


def dagster_on(port: int, out: io.StringIO, cancel_stale_before: float | None) -> DagsterDev:
    home = Path("/nonexistent")
    console = Console(out, prefix="")
    return DagsterDev(home, home, home, port, {}, home / "dagster.log", console, Interrupts(), cancel_stale_before)


def test_ready_once_the_code_is_loaded_and_stale_runs_are_canceled(fake_ui):
    ui, port = fake_ui
    out = io.StringIO()
    dagster = dagster_on(port, out, cancel_stale_before=1234.5)
    assert not dagster.poll(1.0) and not dagster.settled  # answering, still loading the code
    ui.load_status = "LOADED"
    assert dagster.poll(2.0) and dagster.answered and dagster.settled and dagster.answered_at is not None
    assert not dagster.poll(3.0)  # settled once
    runs, terminate = ui.asked[-2:]
    assert runs["variables"]["filter"] == {"statuses": ["STARTING", "STARTED", "CANCELING"], "createdBefore": 1234.5}
    assert terminate["variables"] == {"runIds": ["0123456789abcdef"], "policy": "MARK_AS_CANCELED_IMMEDIATELY"}
    assert out.getvalue() == "marked 1 run(s) an earlier session left running as canceled: 01234567\n"


def test_runs_are_left_alone_when_the_storage_is_not_ours(fake_ui):
    ui, port = fake_ui
    ui.load_status = "LOADED"
    dagster = dagster_on(port, io.StringIO(), cancel_stale_before=None)
    assert dagster.poll(1.0) and dagster.answered
    assert all("workspaceOrError" in body["query"] for body in ui.asked)


def test_gives_up_waiting_and_says_where_to_look():
    out = io.StringIO()
    dagster = dagster_on(free_port(), out, cancel_stale_before=1.0)  # nothing listens there
    assert not dagster.poll(UI_READY_TIMEOUT_S - 1)
    assert dagster.poll(UI_READY_TIMEOUT_S + 1) and dagster.settled and not dagster.answered
    assert out.getvalue() == "WARNING: the Dagster UI did not answer within 180s; see /nonexistent/dagster.log\n"
    assert dagster.first_dead() is None and dagster.stop()  # never started: nothing to stop
