"""The mutation matrix: every mutant through the chaos harness (N seeds) and its unit tests.

    .venv/bin/python -m event_ingest_tests.mutation.matrix [--seeds N] [--seconds S] [--mutants a,b]

Prints one row per broken guard: the chaos verdict, the check named for that guard and in how
many of the N seeds it failed, every check that failed (with counts), and the unit tests'
verdict. The last row is the real core, which must pass everything. Exit 0 only if every mutant
is caught (by its check in every seed, or, where no chaos schedule reaches it, by its unit
tests) and the real core passes. Unit tests use the machine's services when
EVENT_INGEST_TEST_DATABASE_URL / EVENT_INGEST_TEST_REDIS_URL are set, else embedded ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from .mutants import MUTANTS
from .runs import chaos_run, unit_run

UNIT_FOR_REAL_CORE = tuple(dict.fromkeys(t for m in MUTANTS.values() for t in m.tests))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m event_ingest_tests.mutation.matrix", description=__doc__)
    parser.add_argument("--seeds", type=int, default=2, help="chaos runs per mutant, seeds 4242, 4243, ...")
    parser.add_argument("--seconds", type=float, default=40.0, help="fault phase of each chaos run")
    parser.add_argument("--mutants", default=",".join(MUTANTS), help="comma-separated (default: all)")
    parser.add_argument("--faults", default=None, help="fault kinds of each run (default: all)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        # No chaos run: every mutant would "pass" its row with nothing having tried to catch it.
        parser.error(f"--seeds {args.seeds}: at least 1 chaos run per mutant is needed, or the matrix proves nothing")
    names = [n for n in args.mutants.split(",") if n]
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        parser.error(f"--mutants: no such mutant {', '.join(unknown)}; known: {', '.join(MUTANTS)}")
    faults = args.faults.split(",") if args.faults else None
    seeds = [4242 + i for i in range(args.seeds)]
    rows = []
    started = time.monotonic()
    for name in [*names, None]:
        label = name or "none (the real core)"
        check = MUTANTS[name].check if name else None
        runs = []
        for seed in seeds:
            run = chaos_run(name, seed=seed, seconds=args.seconds, faults=faults)
            runs.append(run)
            print(
                f"[{time.monotonic() - started:6.0f}s] {label} seed {seed}: "
                f"{'PASS' if run['ok'] else 'FAIL: ' + ', '.join(run['failed'])}",
                file=sys.stderr,
                flush=True,
            )
        unit = unit_run(name, MUTANTS[name].tests if name else UNIT_FOR_REAL_CORE)
        print(
            f"[{time.monotonic() - started:6.0f}s] {label} unit tests: {unit['summary']}", file=sys.stderr, flush=True
        )
        failing = Counter(c for r in runs for c in r["failed"])
        rows.append((name, label, check, runs, failing, unit))
    print(format_table(rows, len(seeds), args))
    return 0 if all(_caught(row) for row in rows) else 1


def _caught(row) -> bool:
    name, _, check, runs, failing, unit = row
    if name is None:
        return all(r["ok"] for r in runs) and unit["passed"]
    if check is None:
        return unit["failed"]
    return failing[check] == len(runs) and unit["failed"]


def format_table(rows, n: int, args) -> str:
    header = ("broken guard", "chaos verdict", "check named for it: caught", "all failing checks (k/N)", "unit tests")
    lines = []
    for name, label, check, runs, failing, unit in rows:
        fails = sum(not r["ok"] for r in runs)
        verdict = f"FAIL {fails}/{n}" if fails else f"PASS {n}/{n}"
        if name is None:
            named = "-"
        elif check is None:
            named = "none reachable (see note)"
        else:
            named = f"{check} {failing[check]}/{n}"
        others = ", ".join(f"{c} {k}/{n}" for c, k in failing.most_common()) or "-"
        unit_text = ("FAIL (caught)" if unit["failed"] else "pass") if name else ("pass" if unit["passed"] else "FAIL")
        lines.append((label, verdict, named, others, unit_text))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = [
        f"mutation matrix: {n} seed(s) per row, --seconds {args.seconds:g}"
        + (f", faults {args.faults}" if args.faults else ", all fault kinds"),
        "",
    ]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    out.append(fmt.format(*header))
    out.append("-+-".join("-" * w for w in widths))
    out += [fmt.format(*line) for line in lines]
    notes = [f"{m.name}: {m.note}" for m in MUTANTS.values() if m.note and m.name in {r[0] for r in rows}]
    if notes:
        out += ["", *("note: " + text for text in notes)]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
