"""``event-ingest chaos`` and ``python -m event_ingest.chaos``: options, the run, the exit code."""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
from pathlib import Path

from .plan import FAULT_KINDS


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the fault phase (default 60)")
    parser.add_argument("--consumers", type=int, default=3, help="consumer processes, K (default 3)")
    parser.add_argument("--sources", type=int, default=2, help="mock sources, M (default 2)")
    parser.add_argument(
        "--backlog", type=int, default=2000, help="ids 1..B exist at each source at start (default 2000)"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="live events per second per source (default 20)")
    parser.add_argument("--page-size", type=int, default=100, help="events per page (default 100)")
    parser.add_argument(
        "--error-rate",
        type=float,
        default=0.02,
        help="background fraction of requests each source answers 500 (default 0.02)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default: random, printed)")
    parser.add_argument(
        "--faults",
        type=_kinds,
        default=None,
        help="comma-separated fault kinds to inject (default: all; a short run of a few kinds)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="state directory, must be empty or absent; kept afterwards (default: a temp dir, "
        "removed after a passing run)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_chaos(args: argparse.Namespace) -> int:
    from .harness import Harness
    from .processes import HarnessError
    from .report import format_report

    if args.consumers < 2 or args.sources < 1 or args.seconds <= 0 or args.backlog < 0 or args.rate < 0:
        print(
            "event-ingest chaos: --consumers must be >= 2 (a takeover needs a standby), --sources >= 1, "
            "--seconds > 0, --backlog and --rate >= 0",
            file=sys.stderr,
        )
        return 2
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM both end the run through the same cleanup (installed explicitly: a
    # process started in the background may have inherited SIGINT ignored).
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    harness = Harness(args)
    try:
        report = harness.run()
    except KeyboardInterrupt:
        print("event-ingest chaos: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    except HarnessError as exc:
        print(f"event-ingest chaos: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.json:
        print(json.dumps(report, indent=2), flush=True)
    else:
        print(format_report(report), flush=True)
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m event_ingest.chaos [options]`` runs the harness; ``... consumer CONFIG NAME`` is a consumer."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if argv[:1] == ["consumer"]:
        from .consumer import run_consumer

        return run_consumer(Path(argv[1]), argv[2])
    parser = argparse.ArgumentParser(
        prog="python -m event_ingest.chaos",
        description="Chaos harness: real processes, real faults, a ledger that must balance.",
    )
    add_arguments(parser)
    return run_chaos(parser.parse_args(argv))
