"""The chaos harness, run for real: a minute of faults against 3 consumers and 2 sources.

It starts its own embedded Postgres and Redis, mock sources and consumer processes, so this test
needs none of the session fixtures. What each check proves is in ``event_ingest/chaos/verify.py``;
that the checks can fail is shown by ``event_ingest_tests/mutation``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from event_ingest.chaos import FAULT_KINDS

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_a_minute_of_chaos_loses_nothing_writes_nothing_twice_and_keeps_spacing():
    cmd = [
        sys.executable,
        "-m",
        "event_ingest.cli",
        "chaos",
        "--seconds",
        "60",
        "--consumers",
        "3",
        "--sources",
        "2",
        "--seed",
        "1",
        "--json",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=220)
    context = f"exit {run.returncode}\nstdout:\n{run.stdout[-6000:]}\nstderr:\n{run.stderr[-6000:]}"
    assert run.stdout.strip(), context
    report = json.loads(run.stdout)

    assert {kind for kind, n in report["faults"].items() if n >= 1} == set(FAULT_KINDS), context
    totals = report["totals"]
    # Served ids from the sources' recorders, stored rows from Postgres.
    assert totals["lost"] == 0 and totals["events_stored"] == totals["events_served"] > 0, context
    # The write audit (a row trigger in the harness's database) saw every row a commit tried to write.
    assert totals["rows_written_twice_in_a_commit"] == 0 and totals["ids_committed_twice"] == 0, context
    assert totals["spacing_violations"] == 0 and totals["min_gap_ms"] >= 200, context
    # Every malformed body and hostile item injected (9 per injection) was kept, with a reason.
    assert totals["quarantined"] >= 9, context
    # Each counted stop_past_lease had a real takeover, the taker held uncommitted: the stale commit was
    # refused (nothing moved in Postgres) and the taker's lease survived the stale release (Redis).
    trials = report["fence_trials"]
    assert trials and all(t["taker_epoch"] > t["stale_epoch"] for t in trials), context
    assert all(t["commit_refused"] and t["lease_kept"] for t in trials), context
    # Redis flushed while a source held its response: nobody asked that source until it had answered.
    assert report["flush_trials"], context
    assert all(t["requests_during_hold"] == 0 for t in report["flush_trials"]), context
    # Redis lost part of its memory with a request in flight (a replica behind promoted, a restart from an older
    # snapshot, the gate record evicted), the grant of that request really gone: the same.
    kinds = {t["kind"] for t in report["loss_trials"]}
    assert kinds == {"redis_failover_behind", "redis_restore_old_snapshot", "redis_evict_gate_records"}, context
    assert all(t["grant_lost"] and t["in_flight"] for t in report["loss_trials"]), context
    assert all(t["requests_during_hold"] == 0 for t in report["loss_trials"]), context
    assert report["requests_while_redis_down"] == 0 and report["requests_during_retry_after"] == 0, context
    assert report["checks"] == {name: True for name in report["checks"]}, context
    assert run.returncode == 0, context
