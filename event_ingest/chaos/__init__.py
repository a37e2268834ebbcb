"""Chaos harness: real processes, real faults, and a ledger that must balance at the end.

    event-ingest chaos --seconds 60 --consumers 3 --sources 2 [--backlog B] [--rate R] [--seed S]
                       [--faults KIND,...] [--json]

It starts its own Postgres and Redis (embedded, in a temporary state directory), M mock sources
(separate processes: a backlog of ids 1..B plus live events at R/s) and K consumers. Each consumer
is a deployment in a process group of its own running the production worker (``core.worker``):
a source host per source that stands by on the lease and tails the source while it holds it. A
consumer that dies is restarted. On a schedule drawn from ``--seed`` it breaks things, one fault
at a time; the first round covers every kind once, shuffled and spaced over the first 80% of the
run (at most ~6 s apart), random extras follow. Then the faults and the sources' production stop,
the consumers catch up and stop, and the ledger is balanced (``verify.CHECKS``: what each check
proves). Exit 0 only if every check holds and every fault kind was injected.

==================================  =====================================================
kill_between_fetch_and_commit       SIGKILL a consumer holding a fetched, uncommitted page
kill_between_commit_and_release     SIGKILL a consumer right after a commit, lease still held
stop_past_lease                     SIGSTOP a drain holding a fetched page until its lease ran
                                    out and a standby took over; hold the taker after its
                                    fetch, wake the stale one: Postgres must show that its
                                    commit moved nothing, Redis that the taker keeps its lease
redis_restart                       stop Redis under running drains (no request may reach a
                                    source meanwhile), start it again with no state
redis_flush_in_flight               FLUSHALL while a source holds its response to a drain:
                                    leases and gates vanish with a request in flight; no
                                    request may reach the source until it has answered
redis_failover_behind               the same, but Redis loses only the last writes: its
                                    replica (fed through a link the harness holds) is behind
                                    when the held request's grant lands on the primary; the
                                    primary is killed, the replica promoted, the VIP moved
redis_restore_old_snapshot          the same after Redis is restarted from an RDB saved
                                    before the held request's grant
redis_evict_gate_records            the same after the source's gate record is evicted under
                                    a memory limit (volatile-lru, TTL'd ballast; the era key,
                                    without a TTL, stays)
postgres_restart                    stop and start Postgres under running drains
pg_terminate_backend                terminate the consumers' Postgres connections
burst_5xx / timeouts / resets       one-shot source faults via ``POST /control``
rate_limit_429                      429 with Retry-After
malformed                           bodies that are not pages, and hostile items (no id,
                                    non-integer id, not an object) that must be quarantined
==================================  =====================================================

Modules: ``cli`` (options, exit code), ``plan`` (fault kinds, timings, schedule), ``harness``
(services, lifecycle, catch-up; it owns every server and process of the run), ``rig`` (the frozen
view of a set-up run that the faults and the verifier are handed: they never see the harness),
``processes`` (mocks, consumers, announcements, supervisor), ``consumer`` (the consumer process and
its checkpoints), ``faults`` (the injector of each kind, by family: ``process_faults``,
``redis_faults``, ``postgres_faults``, ``source_faults``), ``verify`` (the ledger and its checks),
``explain`` (each spacing violation explained), ``report`` (the text report), ``redis_pair`` and
``relay`` (a primary and its replica behind a VIP, for the failover).
"""

from .cli import add_arguments, main, run_chaos
from .plan import FAULT_KINDS

__all__ = ["FAULT_KINDS", "add_arguments", "main", "run_chaos"]
