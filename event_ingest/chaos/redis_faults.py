"""Redis faults: a restart under running drains, and state lost while a source holds a response.

* ``redis_restart``: Redis stopped under running drains (no request may reach a source meanwhile)
  and started again with no state.
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
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..core.gate import ERA_KEY
from ..core.gate import KEY_PREFIX as GATE_PREFIX
from ..core.lease import KEY_PREFIX as LEASE_PREFIX
from ..devstack.procs import kill_hard
from .plan import BEHIND_S, IN_FLIGHT_HOLD_MS, SOURCE_TIMEOUT_S
from .processes import MockProc
from .redis_pair import pid_of, port_of
from .rig import Rig, start_again

log = logging.getLogger("event_ingest.chaos")

BALLAST_PREFIX = "chaos-ballast:"

T = TypeVar("T")


class RedisFaults:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.requests_while_redis_down = 0
        self.flush_trials: list[dict[str, Any]] = []
        self.loss_trials: list[dict[str, Any]] = []  # the partial losses, each with its "kind"

    def injectors(self) -> dict[str, Callable[[], str | None]]:
        return {
            "redis_restart": self.redis_restart,
            "redis_flush_in_flight": self.redis_flush_in_flight,
            "redis_failover_behind": self.redis_failover_behind,
            "redis_restore_old_snapshot": self.redis_restore_old_snapshot,
            "redis_evict_gate_records": self.redis_evict_gate_records,
        }

    def _leases(self) -> list[bytes | str]:
        client = self.rig.redis_client()
        try:
            return client.keys(LEASE_PREFIX + "*")
        finally:
            client.close()

    def redis_restart(self) -> str | None:
        leases = self._leases()
        if not leases:
            return None  # no drain running through it: nothing tested
        server = self.rig.redis_primary()
        server.stop()
        time.sleep(0.3)  # a request granted just before the stop may still be arriving
        before = self.rig.requests_at_sources()
        down_s = self.rig.rng.uniform(1.0, 2.5)
        time.sleep(down_s)
        during = self.rig.requests_at_sources() - before
        self.requests_while_redis_down += during
        start_again(server, "redis")
        return (
            f"redis down {down_s + 0.3:.1f}s under {len(leases)} running drains, restarted empty; "
            f"{during} requests reached sources while it was down"
        )

    def _hold_a_request(self) -> tuple[MockProc, float] | None:
        """A source holds its response to the next request it gets: (the source, a moment it was held at)."""
        rig = self.rig
        mock = rig.rng.choice(rig.mocks)
        rig.http.post(
            mock.base_url + "/control", json={"next": [{"kind": "delay_then", "delay_ms": IN_FLIGHT_HOLD_MS}]}
        ).raise_for_status()
        deadline = time.monotonic() + 10
        while rig.http.get(mock.base_url + "/control").json()["queued"]:
            if time.monotonic() > deadline:
                rig.http.post(mock.base_url + "/control", json={"clear_next": True})
                return None
            time.sleep(0.002)
        return mock, time.monotonic()

    def _judge_hold(self, mock: MockProc, taken_at: float, lost_at: float) -> dict[str, Any]:
        """After the held response and the new holder's first request: what reached the source meanwhile."""
        hold_s = IN_FLIGHT_HOLD_MS / 1000
        time.sleep(max(lost_at + hold_s + SOURCE_TIMEOUT_S + 0.5 - time.monotonic(), 0.0))
        arrivals = self.rig.mock_stats(mock, arrivals=True)["arrivals"]  # monotonic, the same clock as ours
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

    def redis_flush_in_flight(self) -> str | None:
        held = self._hold_a_request()
        if held is None:
            return None
        mock, taken_at = held
        client = self.rig.redis_client()
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

    def _loss_trial(self, kind: str, trial: dict[str, Any], lost: bool, what: str) -> str | None:
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

    def redis_failover_behind(self) -> str | None:
        pair = self.rig.pair
        if pair is None:
            raise RuntimeError("redis_failover_behind needs the Redis pair (a replica behind a VIP)")
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
        on_primary = _read(port_of(pair.primary), lambda c: c.hget(key, "granted_at"))
        replica_port = port_of(pair.the_replica())
        pair.kill_primary()
        on_replica = _read(replica_port, lambda c: c.hget(key, "granted_at"))
        pair.promote()
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

    def redis_restore_old_snapshot(self) -> str | None:
        server = self.rig.redis_primary()
        port = port_of(server)
        saved_us = _read(port, _save)
        time.sleep(BEHIND_S)  # grants after the snapshot; its copies of the leases run out
        held = self._hold_a_request()
        snapshot = server.data_dir / "dump.rdb"
        if held is None:
            snapshot.unlink(missing_ok=True)
            return None
        mock, taken_at = held
        granted_at = _read(port, lambda c: c.hget(GATE_PREFIX + mock.name, "granted_at"))
        kill_hard(pid_of(server))  # a crash: nothing saved since the snapshot
        server.stop()
        start_again(server, "redis")
        lost_at = time.monotonic()
        loaded = int(_read(port_of(server), lambda c: c.info("persistence").get("rdb_last_load_keys_loaded", 0)))
        snapshot.unlink(missing_ok=True)  # a later redis_restart starts empty, as it says
        trial = self._judge_hold(mock, taken_at, lost_at)
        what = (
            f"Redis saved a snapshot, granted a request to {mock.name} {_ms(_int(granted_at), saved_us)} ms later, "
            f"and was restarted from that snapshot ({loaded} keys loaded)"
        )
        lost = loaded > 0 and granted_at is not None and int(granted_at) > saved_us
        return self._loss_trial("redis_restore_old_snapshot", trial, lost, what)

    def redis_evict_gate_records(self) -> str | None:
        held = self._hold_a_request()
        if held is None:
            return None
        mock, taken_at = held
        port = self.rig.redis_port()
        wanted = {GATE_PREFIX + mock.name, LEASE_PREFIX + mock.name}
        evicted, ballast = _evict_under_limit(port, wanted, until=taken_at + 0.5 * IN_FLIGHT_HOLD_MS / 1000)
        lost_at = time.monotonic()
        era_kept = bool(_read(port, lambda c: c.exists(ERA_KEY)))
        trial = self._judge_hold(mock, taken_at, lost_at)
        ours = ", ".join(sorted(wanted & evicted)) or f"none of {mock.name}'s"
        what = (
            f"under maxmemory (volatile-lru) {ballast} TTL'd ballast keys evicted {len(evicted)} keys, among them "
            f"{ours}; the era key {'stayed' if era_kept else 'WENT TOO'}"
        )
        return self._loss_trial("redis_evict_gate_records", trial, GATE_PREFIX + mock.name in evicted, what)


def _read(port: int, call: Callable[[redis_py.Redis], T]) -> T:
    """One call on one server, straight to it (not through the VIP), not retried: what that server holds now."""
    client = redis_py.Redis(
        host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    try:
        return call(client)
    finally:
        client.close()


def _save(client: redis_py.Redis) -> int:
    """SAVE; the moment (µs, Redis' clock) before it: everything granted later is not in the snapshot."""
    give_up = time.monotonic() + 15
    while True:
        seconds, micros = client.time()
        try:
            client.save()
            return int(seconds) * 1_000_000 + int(micros)
        except redis_py.ResponseError as exc:  # a replica's full sync has a child saving: wait for it
            if "in progress" not in str(exc) or time.monotonic() > give_up:
                raise
            time.sleep(0.1)


def _int(value: Any) -> int | None:
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
