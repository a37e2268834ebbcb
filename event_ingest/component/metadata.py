"""The one builder of a materialization's metadata: counters and figures as the UI plots them.

A one-off drain of a partition (assets.py) and a window of a long-lived ingest run (ingest_job.py)
report the same :class:`~event_ingest.core.progress.Counters` under the same keys, so a partition's
plots read the same whichever made the materialization.
"""

from __future__ import annotations

import dagster as dg

from ..core.progress import Counters

# The counters' keys in the UI (a drain's ``events_stored`` is plotted as ``events``).
COUNTER_KEYS = {
    "events_stored": "events",
    "pages": "pages",
    "requests": "requests",
    "errors": "errors",
    "quarantined": "quarantined",
}


def progress_metadata(counts: Counters, **figures: object) -> dict:
    """The counters, then each figure given (None: left out) as an int, float, bool or text value.
    Figures are keyword arguments, so a key with a slash (``dagster/row_count``) is passed as ``**{...}``."""
    metadata: dict = {key: dg.MetadataValue.int(getattr(counts, name)) for name, key in COUNTER_KEYS.items()}
    for key, value in figures.items():
        if value is None:
            continue
        if isinstance(value, bool):
            metadata[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            metadata[key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            metadata[key] = dg.MetadataValue.float(value)
        else:
            metadata[key] = str(value)
    if counts.drain_ends:
        metadata["drain_ends"] = ", ".join(f"{k} x{v}" for k, v in sorted(counts.drain_ends.items()))
    return metadata
