"""Failover case: two complete deployments drain the same sources; one dies whole half way.

    event-ingest bench failover [--sources 3] [--rate 50] [--minutes 10] [--run-seconds 120] [--quick]

Two `dagster dev` deployments (each its own DAGSTER_HOME, Dagster database, daemon, sensors
and runs, as on two servers) share the events Postgres, Redis and sources. The second
stands by: its runs wait on the sources' leases, without a stream of short runs. Half way
the first is killed (SIGKILL, every process); the second takes each source over when its
lease runs out (runs.lease_ttl_s). Same figures as the continuity case, judged over the
whole window: nothing lost, no gap under 200 ms, the pause at the failover.
"""

from __future__ import annotations

import argparse

from .continuity import add_arguments as _continuity_arguments
from .continuity import run_live

HELP = "two deployments on the same sources, one killed whole half way: pause, ratio, nothing lost"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _continuity_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_live(args, case="failover", deployments=2)
