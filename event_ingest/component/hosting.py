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
* the daemon down or restarting for longer than ``WANTED_TTL_S``: every mark expires and the runs let
  go (and end a minute later, hosting nothing); the first ticks after the daemon returns bring the
  sources back, asking for runs where none is left. (Without the daemon no successor run could start
  either: it already is what keeps ingestion going past a run's life.)
* Redis losing its memory: the marks go with it, and come back within one tick; the gate makes every
  source wait out one request's life after such a loss anyway.

The mark is keyed by source name, like the lease and the gate: a source name is global. With several
deployments on one Redis, a source stays wanted while any deployment's sensor for it runs (and any of
them may host it: the lease decides who drains).
"""

from __future__ import annotations

import redis

WANTED_PREFIX = "event-ingest:wanted:"
SENSOR_INTERVAL_S = 10
# Six ticks: a tick or two late (a busy daemon, a code location reload) must not pause a source.
WANTED_TTL_S = 6 * SENSOR_INTERVAL_S


def mark_wanted(client: redis.Redis, source: str, sensor: str) -> None:
    """A running sensor's tick: its source stays wanted for WANTED_TTL_S more (the value names the sensor)."""
    client.set(WANTED_PREFIX + source, sensor, px=WANTED_TTL_S * 1000)


def wanted(client: redis.Redis, sources: list[str]) -> set[str]:
    """The sources among ``sources`` whose sensor ticked within WANTED_TTL_S."""
    if not sources:
        return set()
    return {s for s, mark in zip(sources, client.mget([WANTED_PREFIX + s for s in sources])) if mark is not None}
