"""Which sources an `ingest` run hosts: those whose sensor is running, as the sensors themselves say.

Stopping a source's sensor in the UI pauses the source; removing the source from the configuration
removes its sensor. Either way the run hosting it must let go. Dagster has no public Python API that
tells a run whether a sensor is stopped (its on/off switch lives in the instance's schedule storage,
reachable only through internal types), so the sensors say it themselves: every tick of a running
source sensor renews a mark in Redis, ``event-ingest:wanted:<source>``, with a TTL of a few ticks
(``WANTED_TTL_S``, on Redis' clock). A run hosts the members of its slot whose mark exists.

Timeline of what lets a source go, and what does not:

* sensor stopped (paused) or source removed: no more ticks, the mark expires within ``WANTED_TTL_S``,
  the run lets go between two requests and publishes `fresh` as failed ("not wanted"); starting the
  sensor again writes the mark on its next tick, and the run takes the source up again (or, if it
  ended meanwhile with nothing to host, the sensor asks for a new one, as after a crash);
* a new run (a successor, or after a crash) sees the marks at once: it never hosts a paused source,
  not even for a moment;
* the daemon down or restarting (a deploy, a rescheduled pod): the marks lapse, but that proves nothing
  about any source, so a run trusts a lapsed mark only while the sensor daemon is alive - its heartbeat
  in the instance (``DagsterInstance.get_daemon_heartbeats()``, written every 30 s) younger than
  ``DAEMON_ALIVE_S``. Otherwise it keeps hosting what it hosted (a source paused before the outage stays
  paused) and ingestion goes on through the outage, until the run's planned life and its overstay end;
  the sensors ask for successors when the daemon returns. A run started with no daemon at all (`dg
  launch` of the `ingest` job) hosts its whole slot;
* Redis losing its memory: the marks go with it, and come back within one tick; the gate makes every
  source wait out one request's life after such a loss anyway.

The mark is keyed by source name, like the lease and the gate: a source name is global. With several
deployments on one Redis, a source stays wanted while any deployment's sensor for it runs (and any of
them may host it: the lease decides who drains).
"""

from __future__ import annotations

import time

import dagster as dg
import redis

WANTED_PREFIX = "event-ingest:wanted:"
# Twelve ticks at the default interval (runs.sensor_interval_s, 10 s), four at the longest (30 s): late ticks (a
# busy daemon cycling through many sensors, a code location reload) must not pause a source. Seen: at 50 sources
# on 2 busy cores, serial sensor evaluation let some marks lapse after 60 s.
WANTED_TTL_S = 120
# The sensor daemon beats every 30 s: a beat older than this means it is down (or stalled).
DAEMON_ALIVE_S = 45


def mark_wanted(client: redis.Redis, source: str, sensor: str) -> None:
    """A running sensor's tick: its source stays wanted for WANTED_TTL_S more (the value names the sensor)."""
    client.set(WANTED_PREFIX + source, sensor, px=WANTED_TTL_S * 1000)


def wanted(client: redis.Redis, sources: list[str]) -> set[str]:
    """The sources among ``sources`` whose sensor ticked within WANTED_TTL_S."""
    if not sources:
        return set()
    return {s for s, mark in zip(sources, client.mget([WANTED_PREFIX + s for s in sources])) if mark is not None}


def sensors_ticking(instance: dg.DagsterInstance) -> bool:
    """Whether the sensor daemon is alive, so that a mark that lapsed means its sensor stopped."""
    beat = instance.get_daemon_heartbeats().get("SENSOR")
    return beat is not None and time.time() - beat.timestamp < DAEMON_ALIVE_S
