"""The faults: one method per kind, each returning what it did (None: not injected, tried again later).

Two of them are trials with a verdict of their own, read from Postgres, Redis and the sources:

* ``stop_past_lease``: a drain holding a fetched page is SIGSTOPped past its lease; the consumer
  that takes the source over is held right after *its* fetch; the stale one is woken and commits.
  Postgres must show that its commit moved neither the cursor nor a row (the taker has committed
  nothing yet, so only the fence's epoch clause can refuse it), and Redis that its release left
  the taker's lease in place. A stop that nobody took over in time is not counted.
* ``redis_flush_in_flight``: the source holds its response to a drain's request while Redis is
  flushed, so leases and gate records vanish with a request in flight that nobody else knows of.
  The standby consumers take the source over within a lease poll; the gate must make the new
  holder wait out that request: no request may reach the source while the response is held.

Three more hold a response the same way while Redis loses *part* of its memory, each counted only
when the loss really took the grant of the request in flight (what the memory that survives says of
it is read before the consumers can touch it):

* ``redis_failover_behind``: the replica is held behind (its link holds what the primary sends), the
  primary grants the held request and is killed, the replica is promoted and the VIP moved to it. Its
  record of the source is older than the grant.
* ``redis_restore_old_snapshot``: Redis saved an RDB, granted the held request later, and is restarted
  from that RDB.
* ``redis_evict_gate_records``: under a memory limit (``volatile-lru``), TTL'd ballast evicts the
  source's gate record (and lease), while the era key, which has no TTL, stays.

The memory that survives is at least ``BEHIND_S`` old (past a lease TTL), so a standby takes the
source over while the response is held, as it would in a deployment.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..core.gate import ERA_KEY
from ..core.gate import KEY_PREFIX as GATE_PREFIX
from ..core.lease import KEY_PREFIX as LEASE_PREFIX
from ..devstack.procs import kill_hard
from .plan import BEHIND_S, FAULT_KINDS, IN_FLIGHT_HOLD_MS, LEASE_TTL_S, SOURCE_TIMEOUT_S
from .processes import MockProc, Slot

if TYPE_CHECKING:
    from .harness import Harness

log = logging.getLogger("event_ingest.chaos")

BALLAST_PREFIX = "chaos-ballast:"


class Faults:
    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.injected: Counter[str] = Counter({k: 0 for k in FAULT_KINDS})
        self.fault_log: list[dict] = []
        self.markers: list[tuple[str, str]] = []  # (source, marker) of every malformed thing injected
        self.requests_while_redis_down = 0
        self.requests_during_retry_after = 0
        self.fence_trials: list[dict] = []
        self.stops_not_taken_over = 0
        self.flush_trials: list[dict] = []
        self.loss_trials: list[dict] = []  # the partial losses, each with its "kind"
        self._malformed_sent = 0

    def inject(self, kind: str) -> bool:
        began = time.monotonic()
        t = began - self.h.started
        try:
            detail = getattr(self, f"_fault_{kind}")()
        except Exception as exc:  # a fault that failed to inject is reported, the run goes on
            log.warning("chaos: %s could not be injected: %s: %s", kind, type(exc).__name__, exc)
            detail = None
        if detail is None:
            log.warning("chaos: t=%5.1fs %s not injected", t, kind)
            return False
        self.injected[kind] += 1
        # "from"/"until": this host's monotonic clock, the one the sources stamp arrivals on.
        self.fault_log.append(
            {"t": round(t, 2), "kind": kind, "detail": detail, "from": began, "until": time.monotonic()}
        )
        log.info("chaos: t=%5.1fs %s: %s", t, kind, detail)
        return True

    # -- process faults -------------------------------------------------------------------------

    def _arm(self, phase: str, source: str | None = None, timeout: float = 15.0) -> tuple[Slot, dict] | None:
        """Leave an arm file for ``phase`` (of one source, or any); the drain that claims it holds there."""
        bus = self.h.bus
        since = bus.mark()
        arm = self.h.dir / "control" / (f"arm-{phase}@{source}" if source else f"arm-{phase}")
        arm.touch()

        def armed(worker, ev):
            return ev.get("ev") == "armed" and ev.get("phase") == phase and source in (None, ev.get("src"))

        found = bus.wait_for(armed, since, timeout)
        if found is None:
            try:
                arm.unlink()
                return None  # nobody reached that phase in time
            except FileNotFoundError:
                found = bus.wait_for(armed, since, 5.0)  # claimed at the last moment
                if found is None:
                    return None
        worker, ev = found
        return self.h.consumers.slot(worker), ev

    def _fault_kill_between_fetch_and_commit(self) -> str | None:
        armed = self._arm("fetched")
        if armed is None:
            return None
        slot, ev = armed
        self.h.consumers.kill(slot)
        return (
            f"{slot.name} SIGKILLed holding an uncommitted page of {ev['src']} ({ev['n']} events, epoch {ev['epoch']})"
        )

    def _fault_kill_between_commit_and_release(self) -> str | None:
        armed = self._arm("committed")
        if armed is None:
            return None
        slot, ev = armed
        self.h.consumers.kill(slot)
        return f"{slot.name} SIGKILLed after a commit to {ev['src']} (cursor {ev['cursor']}), lease unreleased"

    def _source_now(self, source: str) -> dict:
        cursor, epoch, fenced = self.h.sql(
            "SELECT cursor, epoch, fenced_commits FROM source_state WHERE source = %s", (source,)
        )[0]
        rows = self.h.sql("SELECT count(*) FROM events WHERE source = %s", (source,))[0][0]
        client = self.h.redis_client()
        try:
            lease = client.get(LEASE_PREFIX + source)
        finally:
            client.close()
        return {
            "cursor": cursor,
            "epoch": epoch,
            "rows": rows,
            "fenced_commits": fenced,
            "lease": lease.decode() if lease else None,
        }

    def _fault_stop_past_lease(self) -> str | None:
        consumers = self.h.consumers
        armed = self._arm("fetched")
        if armed is None:
            return None
        stale, ev = armed
        source, epoch = ev["src"], ev["epoch"]
        consumers.signal(stale, signal.SIGSTOP)
        stopped_at = time.monotonic()
        # The lease runs out; a standby takes the source over and fetches: hold it there, uncommitted.
        taken = self._arm("fetched", source=source, timeout=LEASE_TTL_S * 8)
        stopped_s = time.monotonic() - stopped_at
        if taken is None or taken[0] is stale or (taken[1]["epoch"] or 0) <= (epoch or 0):
            if taken is not None:
                consumers.release(taken[0].name, source)
            consumers.release(stale.name, source)
            consumers.signal(stale, signal.SIGCONT)
            self.stops_not_taken_over += 1
            return None  # no takeover, nothing tested: not counted
        taker, taker_ev = taken
        before = self._source_now(source)
        since = self.h.bus.mark()
        consumers.release(stale.name, source)
        consumers.signal(stale, signal.SIGCONT)
        done = self.h.bus.wait_for(
            lambda w, e: w == stale.name and e.get("ev") == "done" and e.get("src") == source, since, 15.0
        )
        after = self._source_now(source)
        consumers.release(taker.name, source)
        outcome = done[1]["status"] if done else "no answer"
        trial = {
            "source": source,
            "stale": stale.name,
            "stale_epoch": epoch,
            "taker": taker.name,
            "taker_epoch": taker_ev["epoch"],
            "stopped_s": round(stopped_s, 2),
            "stale_drain_ended": outcome,
            "before": before,
            "after": after,
            "commit_refused": done is not None and all(after[k] == before[k] for k in ("cursor", "epoch", "rows")),
            "lease_kept": before["lease"] is not None and after["lease"] == before["lease"],
        }
        self.fence_trials.append(trial)
        moved = (
            "moved nothing"
            if trial["commit_refused"]
            else (f"MOVED cursor {before['cursor']} -> {after['cursor']}, rows {before['rows']} -> {after['rows']}")
        )
        return (
            f"{stale.name} SIGSTOPped {stopped_s:.1f}s (lease TTL {LEASE_TTL_S:g}s) holding a page of {source} "
            f"(epoch {epoch}); {taker.name} took over (epoch {taker_ev['epoch']}) and was held after its fetch; "
            f"the stale drain, woken, ended {outcome} and {moved}; the taker's lease "
            f"{'kept' if trial['lease_kept'] else 'GONE'}"
        )

    # -- service faults -------------------------------------------------------------------------

    def _leases(self) -> list[bytes]:
        client = self.h.redis_client()
        try:
            return client.keys(LEASE_PREFIX + "*")
        finally:
            client.close()

    def _fault_redis_restart(self) -> str | None:
        leases = self._leases()
        if not leases:
            return None  # no drain running through it: nothing tested
        redis = self.h.redis
        redis.stop()
        time.sleep(0.3)  # a request granted just before the stop may still be arriving
        before = self.h.requests_at_sources()
        down_s = self.h.rng.uniform(1.0, 2.5)
        time.sleep(down_s)
        during = self.h.requests_at_sources() - before
        self.requests_while_redis_down += during
        _start_again(redis, "redis")
        return (
            f"redis down {down_s + 0.3:.1f}s under {len(leases)} running drains, restarted empty; "
            f"{during} requests reached sources while it was down"
        )

    def _hold_a_request(self) -> tuple[MockProc, float] | None:
        """A source holds its response to the next request it gets: (the source, a moment it was held at)."""
        h = self.h
        mock = h.rng.choice(h.mocks)
        h.http.post(
            mock.base_url + "/control", json={"next": [{"kind": "delay_then", "delay_ms": IN_FLIGHT_HOLD_MS}]}
        ).raise_for_status()
        deadline = time.monotonic() + 10
        while h.http.get(mock.base_url + "/control").json()["queued"]:
            if time.monotonic() > deadline:
                h.http.post(mock.base_url + "/control", json={"clear_next": True})
                return None
            time.sleep(0.002)
        return mock, time.monotonic()

    def _judge_hold(self, mock: MockProc, taken_at: float, lost_at: float) -> dict:
        """After the held response and the new holder's first request: what reached the source meanwhile."""
        hold_s = IN_FLIGHT_HOLD_MS / 1000
        time.sleep(max(lost_at + hold_s + SOURCE_TIMEOUT_S + 0.5 - time.monotonic(), 0.0))
        arrivals = self.h.mock_stats(mock, arrivals=True)["arrivals"]  # monotonic, the same clock as ours
        held_at = max(a for a in arrivals if a <= taken_at)
        during = [a for a in arrivals if held_at < a < held_at + hold_s]
        later = [a for a in arrivals if a > held_at]
        return {
            "source": mock.name,
            "lost_after_ms": round((lost_at - held_at) * 1000, 1),
            "in_flight": lost_at < held_at + hold_s,  # the loss came while the response was held
            "requests_during_hold": len(during),
            "next_gap_ms": round((later[0] - held_at) * 1000, 1) if later else None,
        }

    def _fault_redis_flush_in_flight(self) -> str | None:
        h = self.h
        held = self._hold_a_request()
        if held is None:
            return None
        mock, taken_at = held
        client = h.redis_client()
        try:
            keys = client.dbsize()
            client.flushall()
        finally:
            client.close()
        trial = self._judge_hold(mock, taken_at, time.monotonic())
        self.flush_trials.append(trial)
        return (
            f"FLUSHALL ({keys} keys) {trial['lost_after_ms']:.0f} ms after a request to {mock.name} "
            f"arrived, its response held {IN_FLIGHT_HOLD_MS} ms; {trial['requests_during_hold']} requests arrived "
            f"meanwhile, the next {trial['next_gap_ms']} ms after it"
        )

    def _loss_trial(self, kind: str, trial: dict, lost: bool, what: str) -> str | None:
        """Counted only if the loss took the held request's grant while its response was held."""
        trial = {"kind": kind, **trial, "grant_lost": lost}
        verdict = (
            f"{trial['requests_during_hold']} requests arrived while the response was held, "
            f"the next {trial['next_gap_ms']} ms after it"
        )
        if not (lost and trial["in_flight"]):
            log.warning(
                "chaos: %s not counted (grant lost: %s; lost %s ms after the request arrived, in flight: %s): %s",
                kind,
                lost,
                trial["lost_after_ms"],
                trial["in_flight"],
                what,
            )
            return None
        self.loss_trials.append(trial)
        return f"{what}, {trial['lost_after_ms']:.0f} ms after it arrived (held {IN_FLIGHT_HOLD_MS} ms); {verdict}"

    def _fault_redis_failover_behind(self) -> str | None:
        h, pair = self.h, self.h.pair
        pair.add_replica()
        pair.wait_in_sync()
        pair.hold_link()
        time.sleep(BEHIND_S)  # the replica falls behind; its copies of the leases run out
        held = self._hold_a_request()
        if held is None:
            pair.link.cut()  # the replica reconnects and catches up
            return None
        mock, taken_at = held
        key = GATE_PREFIX + mock.name
        on_primary = _read(h.redis.port, lambda c: c.hget(key, "granted_at"))
        pair.kill_primary()
        on_replica = _read(pair.replica.port, lambda c: c.hget(key, "granted_at"))
        pair.promote()
        h.redis = pair.primary
        lost_at = time.monotonic()
        trial = self._judge_hold(mock, taken_at, lost_at)
        pair.add_replica()
        what = (
            f"the primary granted a request to {mock.name} (granted_at {_int(on_primary)}) {BEHIND_S:g}s after "
            f"its replica's link began holding (the replica's record: granted_at {_int(on_replica)}), and was "
            f"killed; the replica was promoted and the VIP moved to it"
        )
        return self._loss_trial(
            "redis_failover_behind", trial, on_primary is not None and on_primary != on_replica, what
        )

    def _fault_redis_restore_old_snapshot(self) -> str | None:
        h = self.h
        server = h.redis
        saved_us = _read(server.port, _save)
        time.sleep(BEHIND_S)  # grants after the snapshot; its copies of the leases run out
        held = self._hold_a_request()
        snapshot = server.data_dir / "dump.rdb"
        if held is None:
            snapshot.unlink(missing_ok=True)
            return None
        mock, taken_at = held
        granted_at = _read(server.port, lambda c: c.hget(GATE_PREFIX + mock.name, "granted_at"))
        kill_hard(server.pid)  # a crash: nothing saved since the snapshot
        server.stop()
        _start_again(server, "redis")
        lost_at = time.monotonic()
        loaded = _read(server.port, lambda c: c.info("persistence").get("rdb_last_load_keys_loaded", 0))
        snapshot.unlink(missing_ok=True)  # a later redis_restart starts empty, as it says
        trial = self._judge_hold(mock, taken_at, lost_at)
        what = (
            f"Redis saved a snapshot, granted a request to {mock.name} {_ms(_int(granted_at), saved_us)} ms later, "
            f"and was restarted from that snapshot ({loaded} keys loaded)"
        )
        lost = loaded > 0 and granted_at is not None and int(granted_at) > saved_us
        return self._loss_trial("redis_restore_old_snapshot", trial, lost, what)

    def _fault_redis_evict_gate_records(self) -> str | None:
        h = self.h
        held = self._hold_a_request()
        if held is None:
            return None
        mock, taken_at = held
        wanted = {GATE_PREFIX + mock.name, LEASE_PREFIX + mock.name}
        evicted, ballast = _evict_under_limit(h.redis.port, wanted, until=taken_at + 0.5 * IN_FLIGHT_HOLD_MS / 1000)
        lost_at = time.monotonic()
        era_kept = bool(_read(h.redis.port, lambda c: c.exists(ERA_KEY)))
        trial = self._judge_hold(mock, taken_at, lost_at)
        ours = ", ".join(sorted(wanted & evicted)) or f"none of {mock.name}'s"
        what = (
            f"under maxmemory (volatile-lru) {ballast} TTL'd ballast keys evicted {len(evicted)} keys, among them "
            f"{ours}; the era key {'stayed' if era_kept else 'WENT TOO'}"
        )
        return self._loss_trial("redis_evict_gate_records", trial, GATE_PREFIX + mock.name in evicted, what)

    def _fault_postgres_restart(self) -> str:
        self.h.pg.stop()
        down_s = self.h.rng.uniform(0.5, 2.0)
        time.sleep(down_s)
        _start_again(self.h.pg, "postgres")
        return f"postgres stopped (fast shutdown), down {down_s:.1f}s, started again"

    def _fault_pg_terminate_backend(self) -> str | None:
        for _ in range(30):
            rows = self.h.sql(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                ("event-ingest%",),
            )
            if rows[0][0]:
                return f"terminated {rows[0][0]} consumer connections"
            time.sleep(0.1)
        return None

    # -- source faults (one-shot responses, consumed by whichever request comes next) -----------

    def _oneshots(self, shots: list[dict]) -> str | None:
        h = self.h
        mock = h.rng.choice(h.mocks)
        h.http.post(mock.base_url + "/control", json={"next": shots}).raise_for_status()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not h.http.get(mock.base_url + "/control").json()["queued"]:
                return mock.name
            time.sleep(0.05)
        h.http.post(mock.base_url + "/control", json={"clear_next": True})
        return None

    def _fault_burst_5xx(self) -> str | None:
        statuses = [self.h.rng.choice([500, 502, 503, 504]) for _ in range(self.h.rng.randint(2, 4))]
        at = self._oneshots([{"kind": "status", "status": s} for s in statuses])
        return at and f"{at} answered {statuses}"

    def _fault_timeouts(self) -> str | None:
        if self.h.rng.random() < 0.5:
            shot = {"kind": "delay_then", "delay_ms": int(SOURCE_TIMEOUT_S * 1000 * 1.5)}
            what = "a response held past the client timeout"
        else:
            shot = {"kind": "slow_body", "content_length": 100_000, "interval_ms": 250, "duration_s": 4}
            what = "a body dribbled a byte per 250 ms (slowloris)"
        at = self._oneshots([shot])
        return at and f"{at} sent {what}"

    def _fault_resets(self) -> str | None:
        n = self.h.rng.randint(1, 3)
        at = self._oneshots([{"kind": "reset"}] * n)
        return at and f"{at} reset {n} connections"

    def _fault_rate_limit_429(self) -> str | None:
        seconds = self.h.rng.randint(1, 2)
        at = self._oneshots([{"kind": "status", "status": 429, "headers": {"Retry-After": str(seconds)}}])
        if at is None:
            return None
        # The 429 was answered before now (its one-shot is gone), so every consumer must keep off this
        # source for the next `seconds`, less a margin for how late the harness may have noticed.
        mock = self.h.mock(at)
        quiet_until = time.monotonic() + seconds - 0.3
        before = self.h.mock_stats(mock)["requests"]
        time.sleep(max(quiet_until - time.monotonic(), 0.0))
        early = self.h.mock_stats(mock)["requests"] - before
        self.requests_during_retry_after += early
        return f"{at} answered 429 Retry-After: {seconds}; {early} requests came back before it ran out"

    def _fault_malformed(self) -> str | None:
        self._malformed_sent += 1
        mark = f"chaos-{self.h.args.seed}-{self._malformed_sent}"  # unique: found again in quarantine.raw
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
        shots = [{"kind": "body", "body": b} for b in self.h.rng.sample(bodies, 2)]
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
        while time.monotonic() < deadline and self.missing_markers([(at, m) for m in expected]):
            time.sleep(0.1)
        return f"{at} sent 2 bodies that are not pages and a page of {len(hostile)} hostile items"

    def missing_markers(self, markers: list[tuple[str, str]]) -> list[str]:
        missing = []
        for source, marker in markers:
            rows = self.h.sql(
                "SELECT count(*) FROM quarantine WHERE source = %s AND position(convert_to(%s, 'UTF8') in raw) > 0 "
                "AND length(reason) > 0",
                (source, marker),
            )
            if not rows[0][0]:
                missing.append(marker)
        return missing


def _read(port: int, call):
    """One call on one server, straight to it (not through the VIP), not retried: what that server holds now."""
    client = redis_py.Redis(
        host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    try:
        return call(client)
    finally:
        client.close()


def _save(client) -> int:
    """SAVE; the moment (µs, Redis' clock) before it: everything granted later is not in the snapshot."""
    give_up = time.monotonic() + 15
    while True:
        seconds, micros = client.time()
        try:
            client.save()
            return seconds * 1_000_000 + micros
        except redis_py.ResponseError as exc:  # a replica's full sync has a child saving: wait for it
            if "in progress" not in str(exc) or time.monotonic() > give_up:
                raise
            time.sleep(0.1)


def _int(value) -> int | None:
    return int(value) if value is not None else None


def _ms(later_us: int | None, earlier_us: int) -> str:
    return "?" if later_us is None else f"{(later_us - earlier_us) / 1000:.0f}"


def _evict_under_limit(port: int, wanted: set[str], until: float) -> tuple[set[str], int]:
    """A memory limit just above what the server uses, and TTL'd ballast written until every key of ``wanted``
    was evicted (or ``until``). Returns (the keys evicted, as the server's keyspace events name them, how many
    ballast keys were written); the limit, the policy and the ballast are gone afterwards."""
    client = redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    evicted: set[str] = set()
    written = 0
    try:
        client.config_set("notify-keyspace-events", "Ee")
        pubsub.subscribe("__keyevent@0__:evicted")
        client.config_set("maxmemory-policy", "volatile-lru")
        client.config_set("maxmemory", client.info("memory")["used_memory"] + 256 * 1024)
        payload = b"x" * 32 * 1024
        while not wanted <= evicted and time.monotonic() < until:
            try:
                client.set(f"{BALLAST_PREFIX}{written}", payload, px=60_000)
            except redis_py.exceptions.OutOfMemoryError:
                continue  # eviction is time-limited per command; the server goes on evicting between them
            finally:
                written += 1
            while message := pubsub.get_message(timeout=0):
                evicted.add(message["data"].decode())
        while message := pubsub.get_message(timeout=0.05):
            evicted.add(message["data"].decode())
    finally:
        client.config_set("maxmemory", 0)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("notify-keyspace-events", "")
        pubsub.close()
        for chunk in range(0, written, 500):
            client.delete(*(f"{BALLAST_PREFIX}{i}" for i in range(chunk, min(chunk + 500, written))))
        client.close()
    return evicted, written


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
