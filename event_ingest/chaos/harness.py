"""The harness: its own Postgres and Redis, mock sources and consumers; the fault phase; the catch-up.

Lifecycle of one run: set up (embedded servers in a state directory, the schema plus the write
audit, mocks, consumers) -> faults on the seeded schedule -> faults off, consumers catch up ->
consumers stop -> the ledger is balanced (``verify.py``) -> everything stopped, the state
directory removed if the run passed (kept otherwise, or when ``--data-dir`` was given).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from ..devstack.procs import restartable_port
from .faults import Faults
from .plan import (
    CATCH_UP_TIMEOUT_S,
    FAULT_KINDS,
    HARNESS_APP_NAME,
    LEASE_TTL_S,
    MAX_RETRY_AFTER_S,
    NEEDS_REPLICA,
    SOURCE_TIMEOUT_S,
    schedule,
)
from .processes import Bus, Consumers, HarnessError, MockProc, start_mock, stop_mocks
from .verify import install_write_audit, verify

log = logging.getLogger("event_ingest.chaos")


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.kinds: tuple[str, ...] = tuple(args.faults) if getattr(args, "faults", None) else FAULT_KINDS
        self.rng = random.Random(args.seed)
        self.bus = Bus()
        self.keep_dir = args.data_dir is not None
        self.dir: Path | None = None
        self.pg = None
        self.redis = None  # the Redis primary (a failover makes its promoted replica the primary)
        self.pair = None  # with a failover among the faults: the primary's replica and the VIP in front of both
        self.db_url = ""
        self.redis_url = ""
        self.mocks: list[MockProc] = []
        self.consumers: Consumers | None = None
        self.faults = Faults(self)
        self.started = 0.0
        self._http = None

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> dict:
        ok = False
        try:
            self._setup()
            self._chaos()
            caught_up, catch_up_s = self._catch_up()
            self.consumers.stop(wait_s=SOURCE_TIMEOUT_S + 10)
            report = verify(self, caught_up, catch_up_s)
            ok = report["ok"]
            return report
        finally:
            self._cleanup(remove_dir=ok and not self.keep_dir)

    def _setup(self) -> None:
        import httpx

        from ..core import Store, StoreError
        from ..devstack.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError

        if self.args.data_dir:
            self.dir = Path(self.args.data_dir).resolve()
            if self.dir.exists() and any(self.dir.iterdir()):
                raise HarnessError(f"--data-dir {self.dir} is not empty; a chaos run starts from nothing")
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="event-ingest-chaos-"))
        (self.dir / "control").mkdir()
        (self.dir / "logs").mkdir()
        log.info("chaos: seed %s, state in %s", self.args.seed, self.dir)
        self._http = httpx.Client(timeout=10.0)
        try:
            self.pg = EmbeddedPostgres(
                self.dir / "postgres", port=restartable_port(), fast=True, databases=("event_ingest",)
            )
            self.db_url = self.pg.start()
            self.redis = EmbeddedRedis(self.dir / "redis", port=restartable_port())
            self.redis_url = self.redis.start()
            if any(kind in self.kinds for kind in NEEDS_REPLICA):
                from .redis_pair import RedisPair

                self.pair = RedisPair(self.dir, self.redis)
                self.redis_url = self.pair.url  # consumers and harness alike reach Redis through the VIP
        except EmbeddedServerError as exc:
            raise HarnessError(str(exc)) from None
        a = self.args
        for i in range(a.sources):
            self.mocks.append(
                start_mock(
                    self.dir,
                    f"chaos_s{i + 1}",
                    [
                        "--backlog",
                        str(a.backlog),
                        "--rate",
                        str(a.rate),
                        "--error-rate",
                        str(a.error_rate),
                        "--random-seed",
                        str(a.seed * 100 + i),
                    ],
                )
            )
        try:
            with Store(self.db_url, application_name=HARNESS_APP_NAME) as store:
                store.apply_schema(m.name for m in self.mocks)
        except StoreError as exc:
            raise HarnessError(str(exc)) from None
        self.sql(install_write_audit())
        workers = [f"w{i + 1}" for i in range(a.consumers)]
        config = {
            "database_url": self.db_url,
            "redis_url": self.redis_url,
            "control_dir": str(self.dir / "control"),
            "trace_dir": str(self.dir / "logs"),
            "sources": [
                {
                    "name": m.name,
                    "url": m.url,
                    "page_size": a.page_size,
                    "timeout_s": SOURCE_TIMEOUT_S,
                    "max_retry_after_s": MAX_RETRY_AFTER_S,
                }
                for m in self.mocks
            ],
        }
        (self.dir / "consumers.json").write_text(json.dumps(config, indent=2))
        self.consumers = Consumers(self.dir, workers, self.bus)
        self.consumers.start()
        self.started = time.monotonic()

    def _cleanup(self, remove_dir: bool) -> None:
        """Stop everything this run started, whatever state it is in."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
                signal.signal(sig, signal.SIG_IGN)
        if self.consumers is not None:
            self.consumers.kill_all()
        stop_mocks(self.mocks)
        if self.pair is not None:
            try:
                self.pair.stop()  # the primary (self.redis), its replica and the relays
            except Exception as exc:
                log.warning("chaos: could not stop the Redis pair: %s", exc)
        for server in (None if self.pair else self.redis, self.pg):
            if server is not None:
                try:
                    server.stop()
                except Exception as exc:  # keep cleaning up the rest
                    log.warning("chaos: could not stop %s: %s", server, exc)
        if self._http is not None:
            self._http.close()
        if self.dir is not None:
            if remove_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
            else:
                log.info("chaos: state, logs and data kept in %s", self.dir)

    # -- the fault phase ------------------------------------------------------------------------

    def _chaos(self) -> None:
        end = self.started + self.args.seconds
        pending: list[str] = []  # mandatory kinds that could not be injected yet: tried again
        for at, kind, mandatory in schedule(self.rng, self.args.seconds, self.kinds):
            wait = self.started + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif not mandatory and time.monotonic() > self.started + 0.9 * self.args.seconds:
                continue  # running late: drop extras, never the first round
            for retry in list(pending):
                if self.faults.inject(retry):
                    pending.remove(retry)
            if not self.faults.inject(kind) and mandatory:
                pending.append(kind)
        for _ in range(3):
            for kind in list(pending):
                if self.faults.inject(kind):
                    pending.remove(kind)
        remaining = end - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    # -- the end: faults off, catch up ------------------------------------------------------------

    def _catch_up(self) -> tuple[bool, float]:
        """Faults and production off; wait until every cursor reaches what its source has produced."""
        for mock in self.mocks:
            self.http.post(mock.base_url + "/control", json={"clear_next": True, "error_rate": 0.0, "producing": False})
        for slot in self.consumers.slots:
            self.consumers.signal(slot, signal.SIGCONT)
            self.consumers.release(slot.name)
        for name in list((self.dir / "control").iterdir()):
            name.unlink(missing_ok=True)
        started = time.monotonic()
        targets = {m.name: self.mock_stats(m)["produced_max_id"] for m in self.mocks}
        while time.monotonic() - started < CATCH_UP_TIMEOUT_S:
            try:
                cursors = dict(self.sql("SELECT source, cursor FROM source_state"))
            except Exception:
                cursors = {}
            if all(cursors.get(name, 0) >= target for name, target in targets.items()):
                return True, time.monotonic() - started
            time.sleep(0.25)
        log.error("chaos: consumers did not catch up within %.0fs (targets %s)", CATCH_UP_TIMEOUT_S, targets)
        return False, time.monotonic() - started

    # -- helpers --------------------------------------------------------------------------------

    @property
    def http(self):
        return self._http

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(
            self.db_url, application_name=HARNESS_APP_NAME, autocommit=True, connect_timeout=5
        ) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def mock(self, name: str) -> MockProc:
        return next(m for m in self.mocks if m.name == name)

    def mock_stats(self, mock: MockProc, ids: bool = False, arrivals: bool = False) -> dict:
        params = {k: "1" for k, on in (("ids", ids), ("arrivals", arrivals)) if on}
        response = self.http.get(mock.base_url + "/stats", params=params or None)
        response.raise_for_status()
        return response.json()

    def requests_at_sources(self) -> int:
        return sum(self.mock_stats(m)["requests"] for m in self.mocks)

    def redis_client(self):
        import redis

        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    @property
    def lease_ttl_s(self) -> float:
        return LEASE_TTL_S
