"""The ``event-ingest`` command.

    event-ingest dev                      the whole system locally (embedded Postgres/Redis, mock sources, Dagster)
    event-ingest ingest SOURCE            one drain, the same code the Dagster asset runs
    event-ingest status                   per source: cursor, events, lag, errors, quarantine, lease, stuck (reads only)
    event-ingest status --check           exit 1 and one line per configured source past its max_lag_s (a probe)
    event-ingest recount SOURCE           rebuild a source's counters from its rows (after writes that bypassed
                                          the triggers; the checks name the command when they find drift)
    event-ingest skip SOURCE --to-id N    move a source stuck on a page it cannot read past it (fenced)
    event-ingest replay SOURCE --from-id N   read a source again from N (fenced); --delete-from M deletes ids >= M
    event-ingest quarantine list|show|requeue|discard   what was kept, and what to do with it
    event-ingest config check [FILE]      validate a sources file, one line per source
    event-ingest config schema            the JSON schema of the sources file (sources.schema.json)
    event-ingest --version                the installed version
    event-ingest mock-source ...          a mock event source on 127.0.0.1
    event-ingest bench [CASE] ...         benchmarks: drain rate and spacing, commit vs COPY, checks at scale
    event-ingest chaos ...                the fault-injection harness

Exit codes (``event_ingest.exits``): 0 success; 1 the work ended badly (a source error, a fenced drain,
a drain stuck before an item it cannot read, lost events, a skip or requeue that could not be done now)
or, for `status --check`, a source is late; 2 bad configuration, a refused request or unreachable
Postgres/Redis.

The package, along its seams:

    parsing.py     the arguments of every command (the tooling commands' own options load lazily)
    commands.py    the product's commands; quarantine.py the quarantine ones. They raise; they never exit
    services.py    opening Postgres and Redis for a command
    rendering.py   tables and lines for a terminal
    main.py        main(): runs the chosen command and maps what it raised to an exit code and one line
"""

from .main import main
from .parsing import build_parser

__all__ = ["build_parser", "main"]
