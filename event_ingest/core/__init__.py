"""The ingest engine. No Dagster here: Postgres, Redis and HTTP only."""

from .drain import DrainHooks, DrainOptions, DrainStats, drain
from .gate import Gate, GateUnavailable
from .lease import Lease
from .page import Event, MalformedPage, Page, Quarantined, parse_page
from .services import RedisUnavailable, connect_redis
from .store import Fenced, Store, StoreError

__all__ = [
    "DrainHooks",
    "DrainOptions",
    "DrainStats",
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
