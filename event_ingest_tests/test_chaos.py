"""The chaos harness, run for real: a minute of faults against 3 consumers and 2 sources.

It starts its own embedded Postgres and Redis, mock sources and consumer processes, so this test
needs none of the session fixtures. What it proves is in ``event_ingest/chaos.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from event_ingest.chaos import FAULT_KINDS

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_a_minute_of_chaos_loses_nothing_duplicates_nothing_and_keeps_spacing():
    cmd = [sys.executable, "-m", "event_ingest.cli", "chaos", "--seconds", "60", "--consumers", "3",
           "--sources", "2", "--seed", "1", "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=220)
    context = f"exit {run.returncode}\nstdout:\n{run.stdout[-6000:]}\nstderr:\n{run.stderr[-6000:]}"
    assert run.stdout.strip(), context
    report = json.loads(run.stdout)

    assert {kind for kind, n in report["faults"].items() if n >= 1} == set(FAULT_KINDS), context
    totals = report["totals"]
    assert totals["lost"] == 0, context
    assert totals["duplicated"] == 0, context
    assert totals["spacing_violations"] == 0, context
    assert totals["min_gap_ms"] >= 200, context
    assert totals["events_stored"] == totals["events_served"] > 0, context
    # Every malformed body and hostile item injected (9 per injection) was kept, with a reason.
    assert totals["quarantined"] >= 9, context
    # The SIGSTOP is held until another consumer has bumped the epoch, and released before the
    # stopped consumer commits, so its commit must be refused by the fence.
    assert totals["fenced_commits"] >= 1, context
    assert report["stop_past_lease_outcomes"].get("fenced", 0) >= 1, context
    assert report["requests_while_redis_down"] == 0, context
    assert report["checks"] == {name: True for name in report["checks"]}, context
    assert run.returncode == 0, context
