"""The rig: what the faults and the verifier are handed of a chaos run that is set up, and nothing else.

The harness owns the run (it starts every server and process, and stops them whatever happens); once
all is up it freezes what the faults and the verifier need into a ``Rig``: the run's parameters, the
servers and processes, their URLs, the state directory, the clock the fault log is timed on, and small
readers over them (SQL, a mock's ``/stats``, a Redis client). Neither the faults nor the verifier
import the harness.

The Redis primary is the one thing that changes under a run: a failover promotes the replica. The
``RedisPair`` owns which server that is; ``Rig.redis_primary()`` asks it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import redis as redis_py

from ..devstack.embedded import EmbeddedPostgres, EmbeddedRedis
from .plan import HARNESS_APP_NAME
from .processes import Bus, Consumers, MockProc
from .redis_pair import RedisPair, port_of

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("event_ingest.chaos")


@dataclass(frozen=True)
class Rig:
    dir: Path  # the state directory: control/ (arm and held files), logs/ (process logs, traces)
    started: float  # time.monotonic() when the consumers started: t = 0 of the fault log
    seed: int
    seconds: float  # the fault phase
    kinds: tuple[str, ...]  # the fault kinds this run injects
    rng: random.Random  # the seeded schedule's randomness, shared with the faults
    bus: Bus
    consumers: Consumers
    mocks: tuple[MockProc, ...]
    pg: EmbeddedPostgres
    redis: EmbeddedRedis  # the Redis primary the run started with
    pair: RedisPair | None  # with a failover among the kinds: the primary's replica and the VIP before both
    db_url: str
    redis_url: str  # the VIP's with a pair: consumers and harness alike reach Redis through it
    http: httpx.Client

    @property
    def control_dir(self) -> Path:
        return self.dir / "control"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    def redis_primary(self) -> EmbeddedRedis:
        """The Redis server that is the primary now (after a failover, the promoted replica)."""
        return self.pair.primary if self.pair is not None else self.redis

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return run_sql(self.db_url, query, params)

    def mock(self, name: str) -> MockProc:
        return next(m for m in self.mocks if m.name == name)

    def mock_stats(self, mock: MockProc, ids: bool = False, arrivals: bool = False) -> dict[str, Any]:
        params = {k: "1" for k, on in (("ids", ids), ("arrivals", arrivals)) if on}
        response = self.http.get(mock.base_url + "/stats", params=params or None)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def requests_at_sources(self) -> int:
        return sum(int(self.mock_stats(m)["requests"]) for m in self.mocks)

    def redis_client(self) -> redis_py.Redis:
        return redis_py.Redis.from_url(self.redis_url, socket_timeout=5)

    def redis_port(self) -> int:
        return port_of(self.redis_primary())


def run_sql(db_url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on a connection of the harness's own (named so that no fault aims at it); its rows."""
    with psycopg.connect(db_url, application_name=HARNESS_APP_NAME, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def start_again(server: EmbeddedPostgres | EmbeddedRedis, what: str) -> None:
    """Start a stopped server on its port, a few tries (a port can be busy for a moment)."""
    for attempt in range(5):
        try:
            server.start()
            return
        except Exception as exc:
            if attempt == 4:
                raise
            log.warning("chaos: %s did not start again (%s); retrying", what, exc)
            time.sleep(0.5)
