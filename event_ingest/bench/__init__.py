"""Benchmarks, one case per module, each printing a table and writing JSON (and PNG) under --out.

    event-ingest bench [drain options]      the drain case (the default): rate and spacing at the source
    event-ingest bench drain [...]          the same, named
    event-ingest bench commit [...]         the fenced commit of a page next to a plain COPY of the same rows
    event-ingest bench checks [...]         the checks' and the rollup's queries at 1, 10 and 30 million events
    event-ingest bench continuity [...]     live sources through the real sensors and runs, handoffs included
    event-ingest bench failover [...]       the same with two deployments, one killed whole half way
    event-ingest bench scale [...]          N sources (default 50), and what each costs; --curve 1,10,25,50;
                                            --outside: sources from a few shared processes, CPU per request
                                            by part; --profile: py-spy of a run process
    event-ingest bench coldstart [...]      a drain's first request: new, idle, and lost gate state

Every case has --quick (a CI smoke run: small, no speed target asserted) and --out DIR (default: a new
temp dir, printed). Postgres and Redis come from EVENT_INGEST_DATABASE_URL / EVENT_INGEST_REDIS_URL,
or embedded servers are started in a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

# Imported when a case is parsed or run, not with the package: the outside source's processes
# (bench/outside_source.py) run from this package on the standard library alone.
CASES = ("drain", "commit", "checks", "continuity", "failover", "scale", "coldstart")


def case_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    case_module("drain").add_arguments(parser)  # `event-ingest bench` with no case runs the drain case
    cases = parser.add_subparsers(dest="case", metavar="CASE")
    for name in CASES:
        case = case_module(name)
        sub = cases.add_parser(name, help=case.HELP, description=(case.__doc__ or "").split("\n\n")[0])
        case.add_arguments(sub)


def run_bench(args: argparse.Namespace) -> int:
    return case_module(args.case or "drain").run(args)
