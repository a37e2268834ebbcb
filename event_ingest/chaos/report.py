"""The chaos report as text: faults injected, the ledger's figures, the verdict."""

from __future__ import annotations

from .explain import format_violation


def format_report(report: dict) -> str:
    t = report["totals"]
    rows = [(kind, str(count)) for kind, count in report["faults"].items()]
    rows.append(("", ""))
    gap = f"{t['min_gap_ms']:.1f}" if t["min_gap_ms"] is not None else "-"
    rows += [
        ("events served (sources)", str(t["events_served"])),
        ("events stored (postgres)", str(t["events_stored"])),
        ("lost", str(t["lost"])),
        ("rows written twice in a commit", str(t["rows_written_twice_in_a_commit"])),
        ("ids written by two commits", str(t["ids_committed_twice"])),
        ("quarantined", str(t["quarantined"])),
        ("spacing violations (arrival at the source)", str(t["spacing_violations"])),
        ("gaps < 200 ms as the handler read them", str(t["spacing_gaps_by_handler_stamp"])),
        ("min gap at sources (ms)", gap),
        ("requests during a held response (flush)", str(t["requests_during_held_response"])),
        ("  (failover to a replica behind)", str(t["requests_during_held_response_redis_failover_behind"])),
        ("  (restart from an old snapshot)", str(t["requests_during_held_response_redis_restore_old_snapshot"])),
        ("  (gate records evicted)", str(t["requests_during_held_response_redis_evict_gate_records"])),
        (
            "fence trials (stale commit moved sth)",
            f"{len(report['fence_trials'])} ({t['stale_commits_that_moved_something']})",
        ),
        ("taker leases lost", str(t["taker_leases_lost"])),
        ("fenced commits", str(t["fenced_commits"])),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'fault kind'.ljust(width)}  injected", f"{'-' * width}  --------"]
    lines += [f"{name.ljust(width)}  {value}" if name else "" for name, value in rows]
    failed = [name for name, passed in report["checks"].items() if not passed]
    for violation in report.get("violations", []):
        lines += ["", format_violation(violation)]
    lines.append("")
    lines.append(
        f"seed {report['seed']}, {report['seconds']:g}s, {report['consumers']} consumers, "
        f"{report['sources']} sources: " + ("PASS" if report["ok"] else "FAIL: " + ", ".join(failed))
    )
    return "\n".join(lines)
