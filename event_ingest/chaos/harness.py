"""The harness: its own Postgres and Redis, mock sources and consumers; the fault phase; the catch-up.

Lifecycle of one run: set up (embedded servers in a state directory, the schema plus the write
audit, mocks, consumers) -> faults on the seeded schedule -> faults off, consumers catch up ->
consumers stop -> the ledger is balanced (``verify.py``) -> everything stopped, the state
directory removed if the run passed (kept otherwise, or when ``--data-dir`` was given).

The harness owns every server and process of the run; the faults (``faults.py``) and the verifier
(``verify.py``) are handed a frozen ``Rig`` of them (``rig.py``) and never see the harness.
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
from typing import TYPE_CHECKING, Any

from ..devstack.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from ..devstack.procs import restartable_port
from .faults import Faults
from .plan import (
    CATCH_UP_TIMEOUT_S,
    FAULT_KINDS,
    HARNESS_APP_NAME,
    MAX_RETRY_AFTER_S,
    NEEDS_REPLICA,
    SOURCE_TIMEOUT_S,
    schedule,
)
from .processes import Bus, Consumers, HarnessError, MockProc, start_mock, stop_mocks
from .redis_pair import RedisPair
from .rig import Rig, run_sql
from .verify import install_write_audit, verify

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("event_ingest.chaos")


class Harness:
    """Owns a run: every server and process it starts, stopped whatever happens; hands the faults and
    the verifier a ``Rig`` of them once all is up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.kinds: tuple[str, ...] = tuple(args.faults) if getattr(args, "faults", None) else FAULT_KINDS
        self.rng = random.Random(args.seed)
        self.bus = Bus()
        self.keep_dir = args.data_dir is not None
        self.dir: Path | None = None
        self.pg: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None  # the Redis primary it started (a pair owns the primary after)
        self.pair: RedisPair | None = None  # with a failover among the faults: a replica, the VIP before both
        self.mocks: list[MockProc] = []
        self.consumers: Consumers | None = None
        self.http: httpx.Client | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        ok = False
        try:
            rig = self._setup()
            faults = Faults(rig)
            self._chaos(rig, faults)
            caught_up, catch_up_s = self._catch_up(rig)
            rig.consumers.stop(wait_s=SOURCE_TIMEOUT_S + 10)
            report = verify(rig, faults, caught_up, catch_up_s)
            ok = report["ok"]
            return report
        finally:
            self._cleanup(remove_dir=ok and not self.keep_dir)

    def _setup(self) -> Rig:
        import httpx

        from ..core import Store, StoreError

        if self.args.data_dir:
            state_dir = Path(self.args.data_dir).resolve()
            if state_dir.exists() and any(state_dir.iterdir()):
                raise HarnessError(f"--data-dir {state_dir} is not empty; a chaos run starts from nothing")
            state_dir.mkdir(parents=True, exist_ok=True)
        else:
            state_dir = Path(tempfile.mkdtemp(prefix="event-ingest-chaos-"))
        self.dir = state_dir
        (state_dir / "control").mkdir()
        (state_dir / "logs").mkdir()
        log.info("chaos: seed %s, state in %s", self.args.seed, state_dir)
        self.http = http = httpx.Client(timeout=10.0)
        try:
            self.pg = pg = EmbeddedPostgres(
                state_dir / "postgres", port=restartable_port(), fast=True, databases=("event_ingest",)
            )
            db_url = pg.start()
            self.redis = redis = EmbeddedRedis(state_dir / "redis", port=restartable_port())
            redis_url = redis.start()
            if any(kind in self.kinds for kind in NEEDS_REPLICA):
                self.pair = RedisPair(state_dir, redis)
                redis_url = self.pair.url  # consumers and harness alike reach Redis through the VIP
        except EmbeddedServerError as exc:
            raise HarnessError(str(exc)) from None
        a = self.args
        for i in range(a.sources):
            self.mocks.append(
                start_mock(
                    state_dir,
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
            with Store(db_url, application_name=HARNESS_APP_NAME) as store:
                store.apply_schema(m.name for m in self.mocks)
        except StoreError as exc:
            raise HarnessError(str(exc)) from None
        workers = [f"w{i + 1}" for i in range(a.consumers)]
        config = {
            "database_url": db_url,
            "redis_url": redis_url,
            "control_dir": str(state_dir / "control"),
            "trace_dir": str(state_dir / "logs"),
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
        run_sql(db_url, install_write_audit())
        (state_dir / "consumers.json").write_text(json.dumps(config, indent=2))
        self.consumers = consumers = Consumers(state_dir, workers, self.bus)
        consumers.start()
        return Rig(
            dir=state_dir,
            started=time.monotonic(),
            seed=a.seed,
            seconds=a.seconds,
            kinds=self.kinds,
            rng=self.rng,
            bus=self.bus,
            consumers=consumers,
            mocks=tuple(self.mocks),
            pg=pg,
            redis=redis,
            pair=self.pair,
            db_url=db_url,
            redis_url=redis_url,
            http=http,
        )

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
                self.pair.stop()  # its primary now (started here, or the promoted replica), replica, relays
            except Exception as exc:
                log.warning("chaos: could not stop the Redis pair: %s", exc)
        for server in (None if self.pair else self.redis, self.pg):
            if server is not None:
                try:
                    server.stop()
                except Exception as exc:  # keep cleaning up the rest
                    log.warning("chaos: could not stop %s: %s", server, exc)
        if self.http is not None:
            self.http.close()
        if self.dir is not None:
            if remove_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
            else:
                log.info("chaos: state, logs and data kept in %s", self.dir)

    # -- the fault phase ------------------------------------------------------------------------

    def _chaos(self, rig: Rig, faults: Faults) -> None:
        end = rig.started + rig.seconds
        pending: list[str] = []  # mandatory kinds that could not be injected yet: tried again
        for at, kind, mandatory in schedule(rig.rng, rig.seconds, rig.kinds):
            wait = rig.started + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif not mandatory and time.monotonic() > rig.started + 0.9 * rig.seconds:
                continue  # running late: drop extras, never the first round
            for retry in list(pending):
                if faults.inject(retry):
                    pending.remove(retry)
            if not faults.inject(kind) and mandatory:
                pending.append(kind)
        for _ in range(3):
            for kind in list(pending):
                if faults.inject(kind):
                    pending.remove(kind)
        remaining = end - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    # -- the end: faults off, catch up ------------------------------------------------------------

    def _catch_up(self, rig: Rig) -> tuple[bool, float]:
        """Faults and production off; wait until every cursor reaches what its source has produced."""
        for mock in rig.mocks:
            rig.http.post(mock.base_url + "/control", json={"clear_next": True, "error_rate": 0.0, "producing": False})
        for slot in rig.consumers.slots:
            rig.consumers.signal(slot, signal.SIGCONT)
            rig.consumers.release(slot.name)
        for name in list(rig.control_dir.iterdir()):
            name.unlink(missing_ok=True)
        started = time.monotonic()
        targets = {m.name: rig.mock_stats(m)["produced_max_id"] for m in rig.mocks}
        while time.monotonic() - started < CATCH_UP_TIMEOUT_S:
            try:
                cursors = dict(rig.sql("SELECT source, cursor FROM source_state"))
            except Exception:
                cursors = {}
            if all(cursors.get(name, 0) >= target for name, target in targets.items()):
                return True, time.monotonic() - started
            time.sleep(0.25)
        log.error("chaos: consumers did not catch up within %.0fs (targets %s)", CATCH_UP_TIMEOUT_S, targets)
        return False, time.monotonic() - started
