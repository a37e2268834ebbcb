"""Scale case: many live sources through the real sensors and runs, and what each one costs.

    event-ingest bench scale [--sources 50] [--rate 20] [--minutes 10] [--sources-per-run 25]
                             [--run-seconds 300] [--handoff-s 60] [--curve 1,10,25,50] [--quick]
                             [--outside [--per-process 5]] [--profile [--profile-seconds 60]]

The continuity case's measurement (at the sources and in Postgres: ceiling ratio, pauses,
lag, gaps under 200 ms) for N sources, plus what the whole thing costs, sampled from /proc
and the services: CPU (cores) and memory (PSS) of the ingest runs, of all of Dagster, of
Postgres and Redis; connections to the events database; Redis commands/s; Dagster
event-log rows/s - in all and per source. With --curve, one window per size, and a table
and chart of the cost against the number of sources: the measured curve the scaling plan
in the README rests on.

Every window also reports CPU by part (run processes, Dagster's daemon, webserver and code
server, Postgres, Redis, the sources) in cores and in ms of CPU per request at the sources.
--outside serves the sources from a few shared processes that are not the project's mock, with
kernel-stamped arrivals; --profile adds a py-spy profile of the busiest run process (outside.py).
"""

from __future__ import annotations

import argparse
import sys

from . import outside, report
from .continuity import measure_live, print_result, verdicts
from .figures import gap_histogram, lag_chart

HELP = "N live sources through the real sensors and runs: ceiling ratio, lag, and what each source costs"
QUICK = {
    "sources": 4,
    "rate": 20.0,
    "minutes": 1.0,
    "run_seconds": 60,
    "handoff_s": 25,
    "sources_per_run": 2,
    "curve": None,
}
TARGETS = {
    "ratio": ("ratio of the 5/s ceiling", ">=", 0.95),
    "longest_pause_s": ("longest pause, s", "<=", 1.0),
    "lag_p99_s": ("lag p99, s", "<=", 1.0),
    "gaps_under_200ms": ("gaps under 200 ms", "<=", 0),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sources", type=int, default=50, help="live mock sources (default 50)")
    parser.add_argument("--rate", type=float, default=20.0, help="new events per second per source (default 20)")
    parser.add_argument("--minutes", type=float, default=10.0, help="measured window per size (default 10)")
    parser.add_argument("--sources-per-run", type=int, default=25, help="sources one run hosts (default 25)")
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=300.0,
        help="planned life of an ingest run: handoffs inside the window (default 300)",
    )
    parser.add_argument("--handoff-s", type=float, default=60.0, help="successor asked this long before (default 60)")
    parser.add_argument(
        "--sensor-interval-s",
        type=int,
        default=10,
        help="runs.sensor_interval_s: how often each source's sensor ticks (default 10, the product's default)",
    )
    parser.add_argument("--curve", help="comma-separated sizes, one window each (e.g. 1,10,25,50)")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    outside.add_arguments(parser)
    report.add_output_arguments(parser, "CI smoke run: 4 sources in 2 runs for 60 s; no target asserted")


def costs(result: dict) -> dict:
    """What the window cost, in all and per source."""
    n = result["sources"]
    res = result["resources"]
    runs, dagster = res.get("ingest runs", {}), res.get("dagster (all, runs included)", {})
    pg, rd = res.get("postgres", {}), res.get("redis", {})
    log_rows = sum(d["event_log_rows_per_s"] or 0 for d in result["deployments"])
    connections = result["probes"].get("events db connections", {}).get("max")
    worst = {
        "ratio_min": min(r["ratio"] for r in result["per_source"]),
        "lag_p99_max_s": max((r["lag_p99_s"] or 0) for r in result["per_source"]),
        "pause_max_s": max(r["longest_pause_s"] for r in result["per_source"]),
        "gaps_under_200ms": sum(r["gaps_under_200ms"] for r in result["per_source"]),
    }
    total_cpu = sum(
        v.get("cpu_cores") or 0 for k, v in res.items() if k in ("dagster (all, runs included)", "postgres", "redis")
    )
    return {
        "sources": n,
        **worst,
        "cpu_runs_cores": runs.get("cpu_cores"),
        "cpu_dagster_all_cores": dagster.get("cpu_cores"),
        "cpu_postgres_cores": pg.get("cpu_cores"),
        "cpu_redis_cores": rd.get("cpu_cores"),
        "cpu_all_cores": round(total_cpu, 3),
        "pss_runs_mb": runs.get("pss_mb_mean"),
        "pss_dagster_all_mb": dagster.get("pss_mb_mean"),
        "pss_postgres_mb": pg.get("pss_mb_mean"),
        "run_processes": runs.get("processes_max"),
        "events_db_connections": connections,
        "redis_calls_per_s": result["redis_calls_per_s"],
        "event_log_rows_per_s": log_rows,
        "cpu_runs_per_source": round((runs.get("cpu_cores") or 0) / n, 4),
        "cpu_all_per_source": round(total_cpu / n, 4),
        "pss_runs_mb_per_source": round((runs.get("pss_mb_mean") or 0) / n, 1),
        "redis_calls_per_s_per_source": round(result["redis_calls_per_s"] / n, 1),
        "connections_per_source": round(connections / n, 2) if connections else None,
        "event_log_rows_per_s_per_source": round(log_rows / n, 3),
    }


def run(args: argparse.Namespace) -> int:
    error = outside.argument_error(args)
    if error:
        print(f"event-ingest bench scale: {error}", file=sys.stderr)
        return 2
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    out = report.output_dir(args.out, "scale")
    sizes = [int(x) for x in args.curve.split(",")] if args.curve else [args.sources]
    windows, curve = [], []
    correct = True
    for size in sizes:
        args.sources = size
        watch = outside.WindowWatch(args, out, size)
        result, figures, marks, t0 = measure_live(args, case="scale", deployments=1, **watch.options())
        result["targets"] = verdicts(result["per_source"], TARGETS)
        result["costs"] = costs(result)
        watch.complete(result, figures)
        windows.append(result)
        curve.append(result["costs"])
        print_result(result, f"scale ({size} sources)")
        print()
        watch.print(result)
        print()
        lag_chart(
            out / f"scale-{size}-lag.png",
            figures,
            t0=t0,
            marks=marks,
            title=f"scale, {size} sources: lag per source, worst event per second (first 12 sources)",
        )
        gap_histogram(out / f"scale-{size}-gaps.png", figures, title=f"scale, {size} sources: gaps at the sources")
        correct = correct and all(r["gaps_under_200ms"] == 0 and r["lost"] == 0 for r in result["per_source"])
    report.print_table(
        curve,
        [
            "sources",
            "ratio_min",
            "lag_p99_max_s",
            "pause_max_s",
            "cpu_all_cores",
            "cpu_runs_cores",
            "pss_runs_mb",
            "pss_dagster_all_mb",
            "run_processes",
            "events_db_connections",
            "redis_calls_per_s",
            "event_log_rows_per_s",
        ],
        title="cost against the number of sources",
    )
    print()
    report.print_table(
        curve,
        [
            "sources",
            "cpu_all_per_source",
            "cpu_runs_per_source",
            "pss_runs_mb_per_source",
            "connections_per_source",
            "redis_calls_per_s_per_source",
            "event_log_rows_per_s_per_source",
        ],
        title="per source",
    )
    report.write_json(out / "scale.json", {"windows": windows, "curve": curve})
    if len(curve) > 1:
        xs = [c["sources"] for c in curve]
        report.save_chart(
            out / "scale-cost.png",
            title="cost against the number of sources",
            xlabel="sources",
            ylabel="cores / GB",
            series={
                "CPU, everything (cores)": (xs, [c["cpu_all_cores"] for c in curve]),
                "CPU, ingest runs (cores)": (xs, [c["cpu_runs_cores"] or 0 for c in curve]),
                "memory, ingest runs (GB PSS)": (xs, [(c["pss_runs_mb"] or 0) / 1024 for c in curve]),
                "memory, Dagster with runs (GB PSS)": (xs, [(c["pss_dagster_all_mb"] or 0) / 1024 for c in curve]),
            },
        )
    print("correct (no gap under 200 ms, nothing lost)" if correct else "WRONG: a gap under 200 ms or a lost event")
    return 0 if correct else 1
