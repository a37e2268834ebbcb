"""The ledger at the end of a chaos run: every figure from the sources' recorders, Postgres or Redis.

Served ids and arrival times come from each mock source's own recorder (``GET /stats``), stored
rows and cursors from Postgres, and which commit wrote which row from a write audit the harness
installs in its own database: a ``BEFORE INSERT`` row trigger on ``events`` that notes the
transaction of every row a commit *tries* to write. It fires for rows ``ON CONFLICT DO NOTHING``
then skips, and an aborted commit's notes roll back with it, so it sees what the primary key
hides: a row written twice by one commit, or one id written by two commits that both landed.
"""

from __future__ import annotations

from typing import Any

from .explain import explain, read_traces
from .faults import Faults
from .rig import Rig
from .source_faults import missing_markers

# What each check proves; a run passes only if all hold (the README's table is this one).
CHECKS = {
    "nothing_lost": "every id served is stored, and none is missing in 1..cursor",
    "stored_equals_served": "nothing stored that the source did not serve",
    "cursor_is_max_stored_id": "the cursor is the highest stored id (no id skipped past)",
    "no_row_written_twice_in_a_commit": "no commit wrote one row twice (write audit)",
    "no_id_committed_twice": "no id was written by two commits that both landed (write audit)",
    "no_spacing_violation": "no two requests reached a source less than 200 ms apart (kernel receive times)",
    "gate_waits_after_state_lost": "no request reached a source while it held a response and Redis was flushed",
    "gate_waits_after_failover_behind": "no request reached a source while it held a response whose grant the "
    "promoted replica never received",
    "gate_waits_after_old_snapshot": "no request reached a source while it held a response granted after the "
    "snapshot Redis was restarted from",
    "gate_waits_after_eviction": "no request reached a source while it held a response whose gate record was evicted",
    "retry_after_honoured": "no request came back before a Retry-After ran out",
    "no_request_while_redis_down": "no request reached a source while Redis was down",
    "stale_commit_fenced": "a stale holder's commit, with the taker held uncommitted, moved no cursor and no row",
    "lease_kept_by_taker": "the stale holder's release left the taker's lease in Redis",
    "malformed_all_quarantined": "every malformed body and hostile item injected is in quarantine with a reason",
    "every_fault_kind_injected": "each fault kind happened (with a takeover / a running drain where it needs one)",
    "caught_up": "after the faults every cursor reached what its source produced",
    "no_consumer_crash": "no consumer process died that the harness did not kill",
}

AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS chaos_writes (
    xid text NOT NULL DEFAULT pg_current_xact_id()::text,
    source text NOT NULL,
    event_id bigint NOT NULL
);
CREATE OR REPLACE FUNCTION chaos_note_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_writes (source, event_id) VALUES (NEW.source, NEW.event_id);
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS chaos_note_write ON events;
CREATE TRIGGER chaos_note_write BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION chaos_note_write();
"""

# The partial losses' checks, and the fault kind each judges.
LOSS_CHECKS = {
    "gate_waits_after_failover_behind": "redis_failover_behind",
    "gate_waits_after_old_snapshot": "redis_restore_old_snapshot",
    "gate_waits_after_eviction": "redis_evict_gate_records",
}

# (source, rows a commit wrote more than once)
WRITTEN_TWICE_IN_A_COMMIT_SQL = """
SELECT source, count(*) FROM (
    SELECT source, xid, event_id FROM chaos_writes GROUP BY 1, 2, 3 HAVING count(*) > 1) d
GROUP BY source
"""
# (source, ids written by more than one commit)
COMMITTED_TWICE_SQL = """
SELECT source, count(*) FROM (
    SELECT source, event_id FROM chaos_writes GROUP BY 1, 2 HAVING count(DISTINCT xid) > 1) d
GROUP BY source
"""


def install_write_audit() -> str:
    return AUDIT_SQL


def verify(rig: Rig, faults: Faults, caught_up: bool, catch_up_s: float) -> dict[str, Any]:
    """The run's report: the ledger per source and in total, every check (``CHECKS``), the trials."""
    f, process, redis, source = faults, faults.process, faults.redis, faults.source
    twice_in_commit = dict(rig.sql(WRITTEN_TWICE_IN_A_COMMIT_SQL))
    committed_twice = dict(rig.sql(COMMITTED_TWICE_SQL))
    sources = []
    violations: list[dict] = []
    traces = read_traces(rig.logs_dir)
    for mock in rig.mocks:
        seen = rig.mock_stats(mock, ids=True, arrivals=True)
        violations += explain(mock.name, seen["arrival_log"], seen["min_interval_ms"], traces, f.fault_log, rig.started)
        served = set(seen["served_ids"])
        stored = {r[0] for r in rig.sql("SELECT event_id FROM events WHERE source = %s", (mock.name,))}
        cursor, fenced = rig.sql("SELECT cursor, fenced_commits FROM source_state WHERE source = %s", (mock.name,))[0]
        quarantined = rig.sql("SELECT count(*) FROM quarantine WHERE source = %s", (mock.name,))[0][0]
        max_stored = max(stored, default=0)
        lost = (served - stored) | (set(range(1, max_stored + 1)) - stored)
        markers = [(s, m) for s, m in source.markers if s == mock.name]
        sources.append(
            {
                "source": mock.name,
                "produced_max_id": seen["produced_max_id"],
                "requests": seen["requests"],
                "served": len(served),
                "stored": len(stored),
                "lost": len(lost),
                "lost_ids_sample": sorted(lost)[:20],
                "stored_not_served": len(stored - served),
                "rows_written_twice_in_a_commit": twice_in_commit.get(mock.name, 0),
                "ids_committed_twice": committed_twice.get(mock.name, 0),
                "cursor": cursor,
                "max_stored_id": max_stored,
                "quarantined": quarantined,
                "malformed_injected": len(markers),
                "malformed_missing": missing_markers(rig, markers),
                "fenced_commits": fenced,
                "gaps_under_200ms": seen["gaps_under_200ms"],
                "min_gap_ms": seen["min_gap_ms"],
                "judged_on": seen["judged_on"],
                "handler_gaps_under_200ms": seen["handler_gaps_under_200ms"],
                "handler_min_gap_ms": seen["handler_min_gap_ms"],
                "statuses": seen["statuses"],
            }
        )
    gaps = [s["min_gap_ms"] for s in sources if s["min_gap_ms"] is not None]
    totals = {
        "events_served": sum(s["served"] for s in sources),
        "events_stored": sum(s["stored"] for s in sources),
        "lost": sum(s["lost"] for s in sources),
        "rows_written_twice_in_a_commit": sum(s["rows_written_twice_in_a_commit"] for s in sources),
        "ids_committed_twice": sum(s["ids_committed_twice"] for s in sources),
        "quarantined": sum(s["quarantined"] for s in sources),
        "spacing_violations": sum(s["gaps_under_200ms"] for s in sources),
        # Not judged (how late a busy source read its requests), shown beside: see mocksource/arrival.py.
        "spacing_gaps_by_handler_stamp": sum(s["handler_gaps_under_200ms"] for s in sources),
        "requests_during_held_response": sum(t["requests_during_hold"] for t in redis.flush_trials),
        **{
            f"requests_during_held_response_{kind}": sum(
                t["requests_during_hold"] for t in redis.loss_trials if t["kind"] == kind
            )
            for kind in LOSS_CHECKS.values()
        },
        "stale_commits_that_moved_something": sum(not t["commit_refused"] for t in process.fence_trials),
        "taker_leases_lost": sum(not t["lease_kept"] for t in process.fence_trials),
        "fenced_commits": sum(s["fenced_commits"] for s in sources),
        "min_gap_ms": min(gaps) if gaps else None,
        "requests": sum(s["requests"] for s in sources),
    }
    checks = {
        "nothing_lost": totals["lost"] == 0,
        "stored_equals_served": all(s["stored_not_served"] == 0 and s["served"] == s["stored"] for s in sources),
        "cursor_is_max_stored_id": all(s["cursor"] == s["max_stored_id"] for s in sources),
        "no_row_written_twice_in_a_commit": totals["rows_written_twice_in_a_commit"] == 0,
        "no_id_committed_twice": totals["ids_committed_twice"] == 0,
        "no_spacing_violation": totals["spacing_violations"] == 0,
        "gate_waits_after_state_lost": totals["requests_during_held_response"] == 0,
        **{check: totals[f"requests_during_held_response_{kind}"] == 0 for check, kind in LOSS_CHECKS.items()},
        "retry_after_honoured": source.requests_during_retry_after == 0,
        "no_request_while_redis_down": redis.requests_while_redis_down == 0,
        "stale_commit_fenced": totals["stale_commits_that_moved_something"] == 0,
        "lease_kept_by_taker": totals["taker_leases_lost"] == 0,
        "malformed_all_quarantined": all(not s["malformed_missing"] for s in sources),
        "every_fault_kind_injected": all(f.injected[k] >= 1 for k in rig.kinds),
        "caught_up": caught_up,
        "no_consumer_crash": rig.consumers.crashes == 0,
    }
    assert set(checks) == set(CHECKS)
    return {
        "ok": all(checks.values()),
        "seed": rig.seed,
        "seconds": rig.seconds,
        "consumers": len(rig.consumers.slots),
        "sources": len(rig.mocks),
        "faults": {k: f.injected[k] for k in rig.kinds},
        "totals": totals,
        "checks": checks,
        "per_source": sources,
        "violations": violations,
        "fence_trials": process.fence_trials,
        "stops_not_taken_over": process.stops_not_taken_over,
        "flush_trials": redis.flush_trials,
        "loss_trials": redis.loss_trials,
        "drain_ends": dict(rig.bus.drain_ends),
        "requests_while_redis_down": redis.requests_while_redis_down,
        "requests_during_retry_after": source.requests_during_retry_after,
        "consumer_restarts": rig.consumers.restarts,
        "consumer_crashes": rig.consumers.crashes,
        "catch_up_s": round(catch_up_s, 2),
        "fault_log": f.fault_log,
        "state_dir": str(rig.dir),
    }
