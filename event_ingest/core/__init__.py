"""The ingest engine. No Dagster here: Postgres, Redis and HTTP only."""

from .drain import drain
from .gate import Gate, GateUnavailable
from .lease import Lease
from .page import Event, MalformedPage, Page, Quarantined, parse_page
from .progress import Counters, DrainObserver, DrainOptions, DrainStats, DrainStatus, Progress
from .services import RedisUnavailable, connect_redis
from .store import Fenced, Store, StoreError

__all__ = [
    "Counters",
    "DrainObserver",
    "DrainOptions",
    "DrainStats",
    "DrainStatus",
    "Progress",
    "drain",
    "Gate",
    "GateUnavailable",
    "Lease",
    "Event",
    "MalformedPage",
    "Page",
    "Quarantined",
    "parse_page",
    "RedisUnavailable",
    "connect_redis",
    "Fenced",
    "Store",
    "StoreError",
]
