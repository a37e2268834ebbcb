"""What a chaos run does and when: the fault kinds, the timings, and the seeded schedule."""

from __future__ import annotations

import random

FAULT_KINDS = (
    "kill_between_fetch_and_commit",
    "kill_between_commit_and_release",
    "stop_past_lease",
    "redis_restart",
    "redis_flush_in_flight",
    "redis_failover_behind",
    "redis_restore_old_snapshot",
    "redis_evict_gate_records",
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
SOURCE_TIMEOUT_S = 1.0
MAX_RETRY_AFTER_S = 5.0

# The consumers' Store connections are "event-ingest-worker"; pg_terminate_backend aims at
# "event-ingest%" (every Store's prefix), and the harness's own connections are named otherwise.
HARNESS_APP_NAME = "chaos-harness"

# Schedule: the first round's faults at most this far apart; extras this far apart on average.
MAX_FIRST_ROUND_SPACING_S = 6.0
MEAN_EXTRA_GAP_S = 5.0
HOLD_MAX_S = 60.0  # an armed consumer never holds longer than this, whatever the harness does
CATCH_UP_TIMEOUT_S = 90.0

# redis_flush_in_flight and the partial losses: how long the source holds the response it is answering
# when Redis loses state (under the client timeout, so the holder gets its page and goes on to commit).
IN_FLIGHT_HOLD_MS = 700

# redis_failover_behind, redis_restore_old_snapshot: how far behind the memory that survives is (the
# replica held back, the snapshot's age) when the request is held. Past a lease TTL, so the lease copies
# in it have run out and a standby takes the source over while the response is held: the loss then meets
# a consumer that would send.
BEHIND_S = LEASE_TTL_S + 0.5

# The fault kinds that need the harness's Redis to have a replica, behind a VIP.
NEEDS_REPLICA = ("redis_failover_behind",)


def schedule(rng: random.Random, seconds: float, kinds: tuple[str, ...] = FAULT_KINDS) -> list[tuple[float, str, bool]]:
    """(at seconds, kind, mandatory): every kind once, shuffled, then random extras, all in the first 80%."""
    first = list(kinds)
    rng.shuffle(first)
    window = 0.8 * seconds
    spacing = min(window / len(first), MAX_FIRST_ROUND_SPACING_S)
    plan = [((i + 0.5) * spacing, kind, True) for i, kind in enumerate(first)]
    at = len(first) * spacing
    while True:
        at += rng.expovariate(1.0 / MEAN_EXTRA_GAP_S)
        if at >= window:
            return plan
        plan.append((at, rng.choice(kinds), False))
