"""Chaos harness: real processes, real faults, and a ledger that must balance at the end.

    event-ingest chaos --seconds 60 --consumers 3 --sources 2 [--backlog B] [--rate R] [--seed S] [--json]

It starts its own Postgres and Redis (embedded, in a temporary state directory), M mock sources
(separate processes: a backlog of ids 1..B plus a live producer at R events/s) and K consumers.
Each consumer is an independent deployment in its own process group: a process that runs the
real ``drain()`` over every source, round and round, with a short lease TTL and short timeouts
so that every fault resolves within seconds. A consumer that dies is restarted.

Then, on a schedule drawn from ``--seed``, it breaks things, one fault at a time:

==================================  =====================================================
kill_between_fetch_and_commit       SIGKILL a consumer holding a fetched, uncommitted page
kill_between_commit_and_release     SIGKILL a consumer right after a commit, lease still held
stop_past_lease                     SIGSTOP a consumer holding a fetched page until its lease
                                    expired and another consumer took the source over, then
                                    SIGCONT: its stale commit must be refused by the fence
redis_restart                       stop Redis (consumers must not request meanwhile), start
                                    it again on the same port with no state
redis_flushall                      FLUSHALL: leases and gates vanish under running drains
postgres_restart                    stop and start Postgres under running drains
pg_terminate_backend                terminate the consumers' Postgres connections
burst_5xx / timeouts / resets       one-shot source faults via ``POST /control``
rate_limit_429                      429 with Retry-After
malformed                           bodies that are not pages, and hostile items (no id,
                                    non-integer id, not an object) that must be quarantined
==================================  =====================================================

The first round covers every kind once, shuffled and spaced over the first 80% of the run (at
most ~6 s apart); random extra faults follow until then. At the end the faults stop, the consumers
catch up (every cursor reaches the source's produced max id), stop, and the ledger is balanced
per source from Postgres and from each source's own recorder (``GET /stats?ids=1``):

* stored ids == served ids (ids sent in valid 200 responses), none stored twice, none missing
  in 1..cursor;
* every injected malformed body and hostile item is in ``quarantine`` with raw bytes and a reason;
* ``source_state.cursor`` == max stored id (and the ``events_stored`` counter == stored rows);
* no two requests reached a source less than 200 ms apart, none while Redis was down, none
  before a ``Retry-After`` ran out;
* every consumer woken from ``stop_past_lease`` after a takeover had its commit fenced.

Exit 0 only if all of that holds and every fault kind was injected at least once.

How a kill lands exactly between two steps, not by luck: a consumer announces every phase on
stdout ("fetched", "committed", "done"), and at each of the two hook points it tries to claim an
*arm* file the harness left in the control directory. The claim is an atomic rename, so exactly
one consumer gets it; that consumer announces "armed" and holds still in that phase until the
harness has done its deed (SIGKILL, or SIGSTOP-wait-SIGCONT) and removed the claim.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("event_ingest.chaos")  # the same name when run with -m

FAULT_KINDS = (
    "kill_between_fetch_and_commit",
    "kill_between_commit_and_release",
    "stop_past_lease",
    "redis_restart",
    "redis_flushall",
    "postgres_restart",
    "pg_terminate_backend",
    "burst_5xx",
    "timeouts",
    "resets",
    "rate_limit_429",
    "malformed",
)

# Consumers: short enough that every fault resolves within seconds.
LEASE_TTL_S = 2.0
LEASE_WAIT_S = 0.5
DRAIN_SECONDS = 4.0
SOURCE_TIMEOUT_S = 1.0
MAX_RETRY_AFTER_S = 5.0

# The consumers' Store connections are "event-ingest-chaos-<worker>"; pg_terminate_backend aims at
# "event-ingest%" (every Store's prefix), and the harness's own connections are named otherwise.
WORKER_APP_NAME = "event-ingest-chaos"
HARNESS_APP_NAME = "chaos-harness"

# Schedule: the first round's faults at most this far apart; extras this far apart on average.
MAX_FIRST_ROUND_SPACING_S = 6.0
MEAN_EXTRA_GAP_S = 5.0
HOLD_MAX_S = 60.0  # an armed consumer never holds longer than this, whatever the harness does
CATCH_UP_TIMEOUT_S = 90.0


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the fault phase (default 60)")
    parser.add_argument("--consumers", type=int, default=3, help="consumer processes, K (default 3)")
    parser.add_argument("--sources", type=int, default=2, help="mock sources, M (default 2)")
    parser.add_argument("--backlog", type=int, default=2000,
                        help="ids 1..B exist at each source at start (default 2000)")
    parser.add_argument("--rate", type=float, default=20.0, help="live events per second per source (default 20)")
    parser.add_argument("--page-size", type=int, default=100, help="events per page (default 100)")
    parser.add_argument("--error-rate", type=float, default=0.02,
                        help="background fraction of requests each source answers 500 (default 0.02)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default: random, printed)")
    parser.add_argument("--data-dir", default=None,
                        help="state directory, must be empty or absent; kept afterwards (default: a temp dir, "
                             "removed after a passing run)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_chaos(args: argparse.Namespace) -> int:
    if args.consumers < 1 or args.sources < 1 or args.seconds <= 0 or args.backlog < 0 or args.rate < 0:
        print("event-ingest chaos: --consumers and --sources must be >= 1, --seconds > 0, "
              "--backlog and --rate >= 0", file=sys.stderr)
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
    """``python -m event_ingest.chaos [options]`` runs the harness; ``... worker CONFIG NAME`` is a consumer."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if argv[:1] == ["worker"]:
        return run_worker(Path(argv[1]), argv[2])
    parser = argparse.ArgumentParser(prog="python -m event_ingest.chaos", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_chaos(parser.parse_args(argv))


# ----------------------------------------------------------------------------------------------
# Consumer (one process per deployment)
# ----------------------------------------------------------------------------------------------


class Consumer:
    """Drains every source in turn, forever, announcing its phases as JSON lines on stdout."""

    def __init__(self, config: dict, name: str) -> None:
        from .config import SourceConfig

        self.name = name
        self.config = config
        self.sources = [SourceConfig(**s) for s in config["sources"]]
        self.control_dir = Path(config["control_dir"])
        self.turn = int(config["workers"].index(name))  # start at different sources

    def announce(self, ev: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"ev": ev, **fields}, default=str) + "\n")
        sys.stdout.flush()

    def checkpoint(self, phase: str, stats, page=None) -> None:
        """A hook point: announce it; if the harness armed this phase, claim it and hold still."""
        fields: dict[str, Any] = {"src": stats.source, "epoch": stats.epoch}
        if page is not None:
            fields.update(n=len(page.events), q=len(page.quarantined))
        else:
            fields.update(cursor=stats.cursor_after)
        self.announce(phase, **fields)
        held = self.control_dir / f"held-{self.name}"
        try:
            os.rename(self.control_dir / f"arm-{phase}", held)  # atomic: one claimant only
        except FileNotFoundError:
            return
        self.announce("armed", phase=phase, **fields)
        deadline = time.monotonic() + HOLD_MAX_S
        while held.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.announce("released", phase=phase, src=stats.source)

    def run(self) -> int:
        from .core import DrainHooks, DrainOptions, Store, StoreError, connect_redis, drain
        from .core.drain import POSTGRES_DOWN, REDIS_DOWN

        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        parent = os.getppid()

        def should_stop() -> bool:
            return stop.is_set() or os.getppid() != parent  # the harness is gone: so are we

        redis_client = connect_redis(self.config["redis_url"], timeout_s=1.0, check=False)
        hooks = DrainHooks(
            after_fetch=lambda stats, page: self.checkpoint("fetched", stats, page),
            after_commit=lambda stats: self.checkpoint("committed", stats),
        )
        options = DrainOptions(lease_ttl_s=LEASE_TTL_S, lease_wait_s=LEASE_WAIT_S, max_seconds=DRAIN_SECONDS)
        store = None
        self.announce("started", pid=os.getpid())
        while not should_stop():
            if store is None:
                try:
                    store = Store(self.config["database_url"], application_name=f"{WORKER_APP_NAME}-{self.name}",
                                  connect_timeout_s=2)
                except StoreError as exc:
                    self.announce("store_down", error=str(exc))
                    stop.wait(0.3)
                    continue
            source = self.sources[self.turn % len(self.sources)]
            self.turn += 1
            stats = drain(source, store=store, redis_client=redis_client, options=options, hooks=hooks,
                          should_stop=should_stop)
            self.announce("done", src=source.name, status=stats.status, epoch=stats.epoch,
                          stored=stats.events_stored, pages=stats.pages, requests=stats.requests,
                          q=stats.quarantined, error=stats.error)
            if stats.status == POSTGRES_DOWN:
                store.close()  # the connection may be dead; the next turn opens a new one
                store = None
            elif stats.status == REDIS_DOWN:
                stop.wait(0.2)
        if store is not None:
            store.close()
        return 0


def run_worker(config_path: Path, name: str) -> int:
    config = json.loads(config_path.read_text())
    return Consumer(config, name).run()


# ----------------------------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------------------------


class HarnessError(RuntimeError):
    """The harness could not set itself up (one line for stderr)."""


@dataclass
class MockProc:
    name: str
    proc: subprocess.Popen
    url: str  # .../events

    @property
    def base_url(self) -> str:
        return self.url.rsplit("/", 1)[0]


@dataclass
class Slot:
    """One consumer deployment; its process is replaced when it dies."""

    name: str
    proc: subprocess.Popen | None = None
    incarnation: int = 0
    expect_exit: bool = False
    restarts: int = 0


class Bus:
    """Announcements from all consumers, in arrival order, for the harness to wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: deque[tuple[int, str, dict]] = deque(maxlen=10_000)
        self._seq = 0
        self.drain_ends: Counter[str] = Counter()

    def post(self, worker: str, ev: dict) -> None:
        with self._cond:
            self._seq += 1
            self._events.append((self._seq, worker, ev))
            if ev.get("ev") == "done":
                self.drain_ends[ev.get("status", "?")] += 1
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return self._seq

    def wait_for(self, match: Callable[[str, dict], bool], since: int, timeout: float) -> tuple[str, dict] | None:
        """The first announcement after ``since`` that matches, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                fresh = []
                for seq, worker, ev in reversed(self._events):
                    if seq <= since:
                        break
                    fresh.append((worker, ev))
                since = self._seq
                for worker, ev in reversed(fresh):
                    if match(worker, ev):
                        return worker, ev
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.5))


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.bus = Bus()
        self.lock = threading.RLock()
        self.keep_dir = args.data_dir is not None
        self.dir: Path | None = None
        self.pg = None
        self.redis = None
        self.db_url = ""
        self.redis_url = ""
        self.mocks: list[MockProc] = []
        self.slots: list[Slot] = []
        self.injected: Counter[str] = Counter({k: 0 for k in FAULT_KINDS})
        self.fault_log: list[dict] = []
        self.markers: list[tuple[str, str]] = []  # (source, marker) of every malformed thing injected
        self._malformed_sent = 0
        self.requests_while_redis_down = 0
        self.requests_during_retry_after = 0
        self.stop_outcomes: Counter[str] = Counter()
        self.stale_commits_not_fenced = 0  # stop_past_lease with a takeover whose drain did not end fenced
        self.crashes = 0
        self.started = 0.0
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._http = None

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> dict:
        ok = False
        try:
            self._setup()
            self._chaos()
            caught_up, catch_up_s = self._catch_up()
            self._stop_consumers()
            report = self._verify(caught_up, catch_up_s)
            ok = report["ok"]
            return report
        finally:
            self._cleanup(remove_dir=ok and not self.keep_dir)

    def _setup(self) -> None:
        import httpx

        from .core import Store, StoreError
        from .devstack.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError

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
            self.pg = EmbeddedPostgres(self.dir / "postgres", port=_server_port(), fast=True,
                                       databases=("event_ingest",))
            self.db_url = self.pg.start()
            self.redis = EmbeddedRedis(self.dir / "redis", port=_server_port())
            self.redis_url = self.redis.start()
        except EmbeddedServerError as exc:
            raise HarnessError(str(exc)) from None
        for i in range(self.args.sources):
            self.mocks.append(self._start_mock(f"chaos_s{i + 1}", i))
        try:
            with Store(self.db_url, application_name=HARNESS_APP_NAME) as store:
                store.apply_schema(m.name for m in self.mocks)
        except StoreError as exc:
            raise HarnessError(str(exc)) from None
        workers = [f"w{i + 1}" for i in range(self.args.consumers)]
        config = {
            "database_url": self.db_url,
            "redis_url": self.redis_url,
            "control_dir": str(self.dir / "control"),
            "workers": workers,
            "sources": [
                {"name": m.name, "url": m.url, "page_size": self.args.page_size, "timeout_s": SOURCE_TIMEOUT_S,
                 "max_run_seconds": DRAIN_SECONDS, "max_retry_after_s": MAX_RETRY_AFTER_S}
                for m in self.mocks
            ],
        }
        (self.dir / "consumers.json").write_text(json.dumps(config, indent=2))
        self.slots = [Slot(name) for name in workers]
        with self.lock:
            for slot in self.slots:
                self._spawn_consumer(slot)
        self._supervising.set()
        self._supervisor = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._supervisor.start()
        self.started = time.monotonic()

    def _start_mock(self, name: str, index: int) -> MockProc:
        out_path = self.dir / "logs" / f"{name}.log"
        cmd = [sys.executable, "-m", "event_ingest.mocksource", "--name", name, "--port", "0",
               "--backlog", str(self.args.backlog), "--rate", str(self.args.rate),
               "--error-rate", str(self.args.error_rate), "--random-seed", str(self.args.seed * 100 + index)]
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            found = re.search(r"listening on (\S+)", out_path.read_text(errors="replace"))
            if found:
                return MockProc(name, proc, found.group(1))
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill_group(proc)
                raise HarnessError(f"mock source {name} did not start; see {out_path}")
            time.sleep(0.05)

    def _spawn_consumer(self, slot: Slot) -> None:
        """Start (or restart) a consumer process; caller holds the lock."""
        cmd = [sys.executable, "-m", "event_ingest.chaos", "worker", str(self.dir / "consumers.json"), slot.name]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.dir / "logs" / f"{slot.name}.log", "ab") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env,
                                    start_new_session=True)
        slot.proc = proc
        slot.incarnation += 1
        slot.expect_exit = False
        threading.Thread(target=self._read_announcements, args=(slot.name, proc), daemon=True,
                         name=f"chaos-read-{slot.name}-{slot.incarnation}").start()

    def _read_announcements(self, name: str, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            if isinstance(ev, dict):
                self.bus.post(name, ev)
        proc.stdout.close()

    def _supervise(self) -> None:
        """Restart consumers that died (killed by a fault, or crashed: that is counted)."""
        while self._supervising.is_set():
            with self.lock:
                for slot in self.slots:
                    if slot.proc is None or slot.proc.poll() is None or not self._supervising.is_set():
                        continue
                    if not slot.expect_exit:
                        self.crashes += 1
                        log.error("chaos: consumer %s exited on its own with code %s; see %s",
                                  slot.name, slot.proc.returncode, self.dir / "logs" / f"{slot.name}.log")
                    (self.dir / "control" / f"held-{slot.name}").unlink(missing_ok=True)
                    slot.restarts += 1
                    self._spawn_consumer(slot)
            time.sleep(0.05)

    def _stop_consumers(self) -> None:
        self._supervising.clear()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        with self.lock:
            live = [s for s in self.slots if s.proc is not None and s.proc.poll() is None]
            for slot in live:
                slot.expect_exit = True
                _signal_group(slot.proc, signal.SIGCONT)
                _signal_group(slot.proc, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_SECONDS + LEASE_WAIT_S + 10
        for slot in live:
            try:
                slot.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("chaos: consumer %s did not stop on SIGTERM; killing it", slot.name)
                _kill_group(slot.proc)

    def _cleanup(self, remove_dir: bool) -> None:
        """Stop everything this run started, whatever state it is in."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
                signal.signal(sig, signal.SIG_IGN)
        self._supervising.clear()
        with self.lock:
            for slot in self.slots:
                if slot.proc is not None:
                    slot.expect_exit = True
                    _kill_group(slot.proc)
        for mock in self.mocks:
            _terminate_group(mock.proc)
        for server in (self.redis, self.pg):
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

    def schedule(self) -> list[tuple[float, str, bool]]:
        """(at seconds, kind, mandatory): every kind once, shuffled, then random extras, all in the first 80%."""
        kinds = list(FAULT_KINDS)
        self.rng.shuffle(kinds)
        window = 0.8 * self.args.seconds
        spacing = min(window / len(kinds), MAX_FIRST_ROUND_SPACING_S)
        plan = [((i + 0.5) * spacing, kind, True) for i, kind in enumerate(kinds)]
        at = len(kinds) * spacing
        while True:
            at += self.rng.expovariate(1.0 / MEAN_EXTRA_GAP_S)
            if at >= window:
                return plan
            plan.append((at, self.rng.choice(FAULT_KINDS), False))

    def _chaos(self) -> None:
        end = self.started + self.args.seconds
        pending: list[str] = []  # mandatory kinds that could not be injected yet: tried again
        for at, kind, mandatory in self.schedule():
            wait = self.started + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif not mandatory and time.monotonic() > self.started + 0.9 * self.args.seconds:
                continue  # running late: drop extras, never the first round
            for retry in list(pending):
                if self._inject(retry):
                    pending.remove(retry)
            if not self._inject(kind) and mandatory:
                pending.append(kind)
        for attempt in range(3):
            for kind in list(pending):
                if self._inject(kind):
                    pending.remove(kind)
        remaining = end - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def _inject(self, kind: str) -> bool:
        t = time.monotonic() - self.started
        try:
            detail = getattr(self, f"_fault_{kind}")()
        except Exception as exc:  # a fault that failed to inject is reported, the run goes on
            log.warning("chaos: %s could not be injected: %s: %s", kind, type(exc).__name__, exc)
            detail = None
        if detail is None:
            log.warning("chaos: t=%5.1fs %s not injected", t, kind)
            return False
        self.injected[kind] += 1
        self.fault_log.append({"t": round(t, 2), "kind": kind, "detail": detail})
        log.info("chaos: t=%5.1fs %s: %s", t, kind, detail)
        return True

    # process faults

    def _arm(self, phase: str, timeout: float = 15.0) -> tuple[Slot, dict] | None:
        """Leave an arm file for ``phase``; the consumer that claims it holds there. (slot, its announcement)."""
        since = self.bus.mark()
        arm = self.dir / "control" / f"arm-{phase}"
        arm.touch()

        def armed(worker, ev):
            return ev.get("ev") == "armed" and ev.get("phase") == phase

        found = self.bus.wait_for(armed, since, timeout)
        if found is None:
            try:
                arm.unlink()
                return None  # nobody reached that phase in time
            except FileNotFoundError:
                found = self.bus.wait_for(armed, since, 5.0)  # claimed at the last moment
                if found is None:
                    return None
        worker, ev = found
        return next(s for s in self.slots if s.name == worker), ev

    def _release(self, slot: Slot) -> None:
        (self.dir / "control" / f"held-{slot.name}").unlink(missing_ok=True)

    def _kill(self, slot: Slot) -> None:
        with self.lock:
            slot.expect_exit = True
            _kill_group(slot.proc)
            self._release(slot)
        # the supervisor restarts it: that is the "restart"

    def _fault_kill_between_fetch_and_commit(self) -> str | None:
        armed = self._arm("fetched")
        if armed is None:
            return None
        slot, ev = armed
        self._kill(slot)
        return (f"{slot.name} SIGKILLed holding an uncommitted page of {ev['src']} "
                f"({ev['n']} events, epoch {ev['epoch']})")

    def _fault_kill_between_commit_and_release(self) -> str | None:
        armed = self._arm("committed")
        if armed is None:
            return None
        slot, ev = armed
        self._kill(slot)
        return f"{slot.name} SIGKILLed after a commit to {ev['src']} (cursor {ev['cursor']}), lease unreleased"

    def _fault_stop_past_lease(self) -> str | None:
        armed = self._arm("fetched")
        if armed is None:
            return None
        slot, ev = armed
        source, epoch = ev["src"], ev["epoch"]
        stopped_at = time.monotonic()
        _signal_group(slot.proc, signal.SIGSTOP)
        # Past the lease TTL, and until another consumer has taken the source over (bumped the epoch).
        taken_over = False
        while time.monotonic() - stopped_at < LEASE_TTL_S * 10:
            if time.monotonic() - stopped_at > LEASE_TTL_S + 0.2:
                if self._epoch(source) > epoch:
                    taken_over = True
                    break
            time.sleep(0.1)
        since = self.bus.mark()
        stopped_s = time.monotonic() - stopped_at
        self._release(slot)
        _signal_group(slot.proc, signal.SIGCONT)
        done = self.bus.wait_for(lambda w, e: w == slot.name and e.get("ev") == "done" and e.get("src") == source,
                                 since, 15.0)
        outcome = done[1]["status"] if done else "no answer"
        self.stop_outcomes[outcome] += 1
        if taken_over and outcome != "fenced":
            self.stale_commits_not_fenced += 1
        return (f"{slot.name} SIGSTOPped {stopped_s:.1f}s (lease TTL {LEASE_TTL_S:g}s) holding a page of {source} "
                f"(epoch {epoch}, {'taken over' if taken_over else 'NOT taken over'}); "
                f"woken, its drain ended {outcome}")

    def _fault_redis_restart(self) -> str:
        if self.rng.random() < 0.3:
            # A quick bounce: back before an in-flight request is answered, so its gate record is gone
            # while it is still in flight (the gate's cold start must wait it out).
            self.redis.stop()
            _start_again(self.redis, "redis")
            return "redis bounced (stopped and started at once), restarted empty"
        self.redis.stop()
        time.sleep(0.3)  # a request granted just before the stop may still be arriving
        before = self._requests_at_sources()
        down_s = self.rng.uniform(1.0, 2.5)
        time.sleep(down_s)
        during = self._requests_at_sources() - before
        self.requests_while_redis_down += during
        _start_again(self.redis, "redis")
        return f"redis down {down_s + 0.3:.1f}s, restarted empty; {during} requests reached sources while it was down"

    def _fault_redis_flushall(self) -> str:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            keys = client.dbsize()
            client.flushall()
        finally:
            client.close()
        return f"FLUSHALL ({keys} keys: leases and gates gone under running drains)"

    def _fault_postgres_restart(self) -> str:
        self.pg.stop()
        down_s = self.rng.uniform(0.5, 2.0)
        time.sleep(down_s)
        _start_again(self.pg, "postgres")
        return f"postgres stopped (fast shutdown), down {down_s:.1f}s, started again"

    def _fault_pg_terminate_backend(self) -> str | None:
        for _ in range(30):
            rows = self._sql(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND pid <> pg_backend_pid()", ("event-ingest%",))
            if rows[0][0]:
                return f"terminated {rows[0][0]} consumer connections"
            time.sleep(0.1)
        return None

    # source faults (one-shot responses, consumed by whichever request comes next)

    def _oneshots(self, shots: list[dict]) -> str | None:
        mock = self.rng.choice(self.mocks)
        self._http.post(mock.base_url + "/control", json={"next": shots}).raise_for_status()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not self._http.get(mock.base_url + "/control").json()["queued"]:
                return mock.name
            time.sleep(0.05)
        self._http.post(mock.base_url + "/control", json={"clear_next": True})
        return None

    def _fault_burst_5xx(self) -> str | None:
        statuses = [self.rng.choice([500, 502, 503, 504]) for _ in range(self.rng.randint(2, 4))]
        at = self._oneshots([{"kind": "status", "status": s} for s in statuses])
        return at and f"{at} answered {statuses}"

    def _fault_timeouts(self) -> str | None:
        if self.rng.random() < 0.5:
            shot = {"kind": "delay_then", "delay_ms": int(SOURCE_TIMEOUT_S * 1000 * 1.5)}
            what = "a response held past the client timeout"
        else:
            shot = {"kind": "slow_body", "content_length": 100_000, "interval_ms": 250, "duration_s": 4}
            what = "a body dribbled a byte per 250 ms (slowloris)"
        at = self._oneshots([shot])
        return at and f"{at} sent {what}"

    def _fault_resets(self) -> str | None:
        n = self.rng.randint(1, 3)
        at = self._oneshots([{"kind": "reset"}] * n)
        return at and f"{at} reset {n} connections"

    def _fault_rate_limit_429(self) -> str | None:
        seconds = self.rng.randint(1, 2)
        at = self._oneshots([{"kind": "status", "status": 429, "headers": {"Retry-After": str(seconds)}}])
        if at is None:
            return None
        # The 429 was answered before now (its one-shot is gone), so every consumer must keep off this
        # source for the next `seconds`, less a margin for how late the harness may have noticed.
        mock = next(m for m in self.mocks if m.name == at)
        quiet_until = time.monotonic() + seconds - 0.3
        before = self._mock_stats(mock)["requests"]
        time.sleep(max(quiet_until - time.monotonic(), 0.0))
        early = self._mock_stats(mock)["requests"] - before
        self.requests_during_retry_after += early
        return f"{at} answered 429 Retry-After: {seconds}; {early} requests came back before it ran out"

    def _fault_malformed(self) -> str | None:
        self._malformed_sent += 1
        mark = f"chaos-{self.args.seed}-{self._malformed_sent}"  # unique: found again in quarantine.raw
        hostile = [
            {"payload": {"chaos": f"{mark}-noid"}},
            {"id": f"{mark}-strid", "payload": {}},
            {"id": None, "payload": f"{mark}-nullid"},
            {"id": 1.5, "payload": f"{mark}-floatid"},
            {"id": True, "payload": f"{mark}-boolid"},
            {"id": -7, "payload": f"{mark}-negid"},
            f"{mark}-notobject",
        ]
        bodies = [
            f'{{"events": [{{"id": 1, "payload": {{"chaos": "{mark}-truncated"}}}}, {{"id": 2, "pay',
            f"<html><body>{mark}-html: 502 Bad Gateway</body></html>",
            f'{{"events": "{mark}-notalist"}}',
        ]
        shots = [{"kind": "body", "body": b} for b in self.rng.sample(bodies, 2)]
        shots.append({"kind": "events", "events": hostile})
        at = self._oneshots(shots)
        if at is None:
            return None
        sent = " ".join(shot.get("body", "") for shot in shots)
        expected = [m for m in (f"{mark}-truncated", f"{mark}-html", f"{mark}-notalist") if m in sent]
        expected += [f"{mark}-{k}" for k in ("noid", "strid", "nullid", "floatid", "boolid", "negid", "notobject")]
        self.markers += [(at, m) for m in expected]
        # Wait until they are in quarantine, so later faults cannot blur what happened to them.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self._missing_markers([(at, m) for m in expected]):
            time.sleep(0.1)
        return f"{at} sent 2 bodies that are not pages and a page of {len(hostile)} hostile items"

    # -- the end: catch up, then balance the ledger ----------------------------------------------

    def _catch_up(self) -> tuple[bool, float]:
        """Faults off; wait until every cursor reaches what its source had produced when the faults stopped."""
        for mock in self.mocks:
            self._http.post(mock.base_url + "/control", json={"clear_next": True, "error_rate": 0.0})
        with self.lock:
            for slot in self.slots:
                if slot.proc is not None:
                    _signal_group(slot.proc, signal.SIGCONT)
                self._release(slot)
        for name in os.listdir(self.dir / "control"):
            (self.dir / "control" / name).unlink(missing_ok=True)
        started = time.monotonic()
        targets = {m.name: self._mock_stats(m)["produced_max_id"] for m in self.mocks}
        while time.monotonic() - started < CATCH_UP_TIMEOUT_S:
            try:
                cursors = dict(self._sql("SELECT source, cursor FROM source_state"))
            except Exception:
                cursors = {}
            if all(cursors.get(name, 0) >= target for name, target in targets.items()):
                return True, time.monotonic() - started
            time.sleep(0.25)
        log.error("chaos: consumers did not catch up within %.0fs (targets %s)", CATCH_UP_TIMEOUT_S, targets)
        return False, time.monotonic() - started

    def _verify(self, caught_up: bool, catch_up_s: float) -> dict:
        sources = []
        for mock in self.mocks:
            seen = self._mock_stats(mock, ids=True)
            served = set(seen["served_ids"])
            rows = self._sql("SELECT event_id FROM events WHERE source = %s", (mock.name,))
            stored_list = [r[0] for r in rows]
            stored = set(stored_list)
            cursor, fenced, counted = self._sql(
                "SELECT cursor, fenced_commits, events_stored FROM source_state WHERE source = %s", (mock.name,))[0]
            quarantined, seen_total = self._sql(
                "SELECT count(*), coalesce(sum(seen_count), 0) FROM quarantine WHERE source = %s", (mock.name,))[0]
            max_stored = max(stored, default=0)
            missing_in_range = set(range(1, max_stored + 1)) - stored
            lost = (served - stored) | missing_in_range
            markers = [(s, m) for s, m in self.markers if s == mock.name]
            sources.append({
                "source": mock.name,
                "produced_max_id": seen["produced_max_id"],
                "requests": seen["requests"],
                "served": len(served),
                "stored": len(stored_list),
                "lost": len(lost),
                "lost_ids_sample": sorted(lost)[:20],
                "duplicated": len(stored_list) - len(stored),
                "stored_not_served": len(stored - served),
                "cursor": cursor,
                "max_stored_id": max_stored,
                "events_stored_counter": counted,
                "quarantined": quarantined,
                "quarantine_sightings": int(seen_total),
                "malformed_injected": len(markers),
                "malformed_missing": self._missing_markers(markers),
                "fenced_commits": fenced,
                "gaps_under_200ms": seen["gaps_under_200ms"],
                "min_gap_ms": seen["min_gap_ms"],
                "statuses": seen["statuses"],
            })
        gaps = [s["min_gap_ms"] for s in sources if s["min_gap_ms"] is not None]
        totals = {
            "events_served": sum(s["served"] for s in sources),
            "events_stored": sum(s["stored"] for s in sources),
            "lost": sum(s["lost"] for s in sources),
            "duplicated": sum(s["duplicated"] for s in sources),
            "quarantined": sum(s["quarantined"] for s in sources),
            "spacing_violations": sum(s["gaps_under_200ms"] for s in sources),
            "fenced_commits": sum(s["fenced_commits"] for s in sources),
            "min_gap_ms": min(gaps) if gaps else None,
            "requests": sum(s["requests"] for s in sources),
        }
        checks = {
            "nothing_lost": totals["lost"] == 0,
            "nothing_duplicated": totals["duplicated"] == 0,
            "no_spacing_violation": totals["spacing_violations"] == 0,
            "every_fault_kind_injected": all(self.injected[k] >= 1 for k in FAULT_KINDS),
            "stored_equals_served": all(s["stored_not_served"] == 0 and s["served"] == s["stored"] for s in sources),
            "cursor_is_max_stored_id": all(s["cursor"] == s["max_stored_id"] for s in sources),
            "malformed_all_quarantined": all(not s["malformed_missing"] for s in sources),
            "no_request_while_redis_down": self.requests_while_redis_down == 0,
            "retry_after_honoured": self.requests_during_retry_after == 0,
            "stale_commits_fenced": self.stale_commits_not_fenced == 0,
            "events_stored_counter_matches": all(s["events_stored_counter"] == s["stored"] for s in sources),
            "caught_up": caught_up,
            "no_consumer_crash": self.crashes == 0,
        }
        return {
            "ok": all(checks.values()),
            "seed": self.args.seed,
            "seconds": self.args.seconds,
            "consumers": self.args.consumers,
            "sources": self.args.sources,
            "faults": dict(self.injected),
            "totals": totals,
            "checks": checks,
            "per_source": sources,
            "drain_ends": dict(self.bus.drain_ends),
            "stop_past_lease_outcomes": dict(self.stop_outcomes),
            "requests_while_redis_down": self.requests_while_redis_down,
            "requests_during_retry_after": self.requests_during_retry_after,
            "consumer_restarts": sum(s.restarts for s in self.slots),
            "consumer_crashes": self.crashes,
            "catch_up_s": round(catch_up_s, 2),
            "fault_log": self.fault_log,
            "state_dir": str(self.dir),
        }

    # -- helpers --------------------------------------------------------------------------------

    def _sql(self, query: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.db_url, application_name=HARNESS_APP_NAME, autocommit=True,
                             connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    def _epoch(self, source: str) -> int:
        try:
            return int(self._sql("SELECT epoch FROM source_state WHERE source = %s", (source,))[0][0])
        except Exception:
            return -1

    def _missing_markers(self, markers: list[tuple[str, str]]) -> list[str]:
        missing = []
        for source, marker in markers:
            rows = self._sql(
                "SELECT count(*) FROM quarantine WHERE source = %s AND position(convert_to(%s, 'UTF8') in raw) > 0 "
                "AND length(reason) > 0", (source, marker))
            if not rows[0][0]:
                missing.append(marker)
        return missing

    def _mock_stats(self, mock: MockProc, ids: bool = False) -> dict:
        response = self._http.get(mock.base_url + "/stats", params={"ids": "1"} if ids else None)
        response.raise_for_status()
        return response.json()

    def _requests_at_sources(self) -> int:
        return sum(self._mock_stats(m)["requests"] for m in self.mocks)


# ----------------------------------------------------------------------------------------------
# Processes and the report
# ----------------------------------------------------------------------------------------------


def _server_port() -> int:
    """A free port for Postgres/Redis *below* the ephemeral range.

    The servers are restarted on the same port while consumers keep reconnecting to it. A connect()
    to a closed port in the ephemeral range can be given that very port as its source port and
    connect to itself (TCP simultaneous open), and then the restart finds its port taken.
    """
    import socket

    from .devstack.embedded import free_port

    def bindable(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low > 11_000:
        pick = random.SystemRandom()
        for _ in range(50):
            port = pick.randrange(10_000, low)
            if bindable(port):
                return port
    return free_port()


def _start_again(server, what: str) -> None:
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


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group a child leads (every child here has its own session)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    _signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        log.warning("chaos: pid %s did not die on SIGKILL", proc.pid)


def _terminate_group(proc: subprocess.Popen) -> None:
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        _kill_group(proc)


def format_report(report: dict) -> str:
    t = report["totals"]
    rows = [(kind, str(count)) for kind, count in report["faults"].items()]
    rows.append(("", ""))
    gap = f"{t['min_gap_ms']:.1f}" if t["min_gap_ms"] is not None else "-"
    rows += [
        ("events served", str(t["events_served"])),
        ("events stored", str(t["events_stored"])),
        ("lost", str(t["lost"])),
        ("duplicated", str(t["duplicated"])),
        ("quarantined", str(t["quarantined"])),
        ("spacing violations", str(t["spacing_violations"])),
        ("fenced commits", str(t["fenced_commits"])),
        ("min gap at sources (ms)", gap),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'fault kind'.ljust(width)}  injected", f"{'-' * width}  --------"]
    lines += [f"{name.ljust(width)}  {value}" if name else "" for name, value in rows]
    failed = [name for name, passed in report["checks"].items() if not passed]
    lines.append("")
    lines.append(f"seed {report['seed']}, {report['seconds']:g}s, {report['consumers']} consumers, "
                 f"{report['sources']} sources: " + ("PASS" if report["ok"] else "FAIL: " + ", ".join(failed)))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
