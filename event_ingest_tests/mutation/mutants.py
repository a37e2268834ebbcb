"""The mutants: one broken guard each, patched into the core of the process that imports this.

Each names the guard it breaks, the chaos check that must then fail (``check``; None where no
chaos schedule can reach the breakage, see its note) and the unit tests that must fail
(``tests``, node ids under ``event_ingest_tests/``). ``apply()`` raises if its patch did not
change what it meant to: a mutant that silently breaks nothing would prove nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

ENV = "EVENT_INGEST_TEST_MUTANT"


@dataclass(frozen=True)
class Mutant:
    name: str
    guard: str
    check: str | None
    tests: tuple[str, ...]
    patch: Callable[[], None]
    note: str = ""


def _replace(module, attr: str, old: str, new: str) -> None:
    text = getattr(module, attr)
    if old not in text:
        raise RuntimeError(f"mutant: {module.__name__}.{attr} no longer contains {old!r}")
    setattr(module, attr, text.replace(old, new))


def gate_spacing_halved() -> None:
    from event_ingest.core import gate

    init = gate.Gate.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.interval_us //= 2

    gate.Gate.__init__ = __init__


def gate_no_wait_after_state_lost() -> None:
    from event_ingest.core import gate

    # A missing record is taken for a new source: granted at once, whatever may be in flight.
    _replace(gate, "ACQUIRE_LUA", "next_at, hold_until, holder = lost + hold, nil, nil", "next_at = now")


def gate_old_era_records_trusted() -> None:
    from event_ingest.core import gate

    # A record written before the new era is read as the whole truth: an old next slot, no reservation.
    _replace(gate, "ACQUIRE_LUA", "elseif record[1] and record[1] ~= era_id then", "elseif false then")


def gate_evictions_unnoticed() -> None:
    from event_ingest.core import gate

    # An eviction since the era began is not seen: a record gone with its reservation reads as a new source.
    _replace(gate, "ACQUIRE_LUA", "elseif era[4] ~= evicted then", "elseif false then")


def gate_server_change_unnoticed() -> None:
    from event_ingest.core import gate

    # Only a missing era opens a new one: a restarted or promoted server's old era (and records) look current.
    _replace(gate, "ACQUIRE_LUA", "if not era_id or era[3] ~= server then", "if not era_id then")


def retry_after_ignored() -> None:
    from event_ingest.core import gate

    close = gate.Gate.close
    gate.Gate.close = lambda self, defer_s=0.0: close(self, 0.0)


def cursor_skips_an_id() -> None:
    from event_ingest.core import page

    next_cursor = page.Page.next_cursor

    def skipping(self, cursor):
        moved = next_cursor(self, cursor)
        return moved + 1 if moved > cursor else moved

    page.Page.next_cursor = skipping


def fence_epoch_clause_removed() -> None:
    from event_ingest.core.store import commit as store  # where the fenced commit reads its SQL

    _replace(store, "ADVANCE_CURSOR_SQL", " AND epoch = %(epoch)s", "")


def fence_cursor_clause_removed() -> None:
    from event_ingest.core.store import commit as store  # where the fenced commit reads its SQL

    _replace(store, "ADVANCE_CURSOR_SQL", " AND cursor = %(old_cursor)s", "")


def lease_released_without_owner_check() -> None:
    from event_ingest.core import lease

    release = lease.Lease.release

    def unchecked(self):
        release(self)
        self._lock.redis.delete(self.key)  # whoever holds it now

    lease.Lease.release = unchecked


def page_committed_twice() -> None:
    from event_ingest.core import store

    store_page = store.Store._store_page

    def twice(cur, source, events, quarantined, at_cursor):
        quarantined = list(quarantined)
        result = store_page(cur, source, events, quarantined, at_cursor)
        store_page(cur, source, events, quarantined, at_cursor)
        return result

    store.Store._store_page = staticmethod(twice)


def stale_slot_timed_from_the_answer() -> None:
    from event_ingest.core import gate

    acquire = gate.Gate.acquire

    def from_the_answer(self, *args, **kwargs):
        grant = acquire(self, *args, **kwargs)
        # A grant counted from when its answer was read: a pause before reading it goes unseen.
        return grant and dataclasses.replace(grant, asked_monotonic=grant.granted_monotonic)

    gate.Gate.acquire = from_the_answer


def send_by_not_checked_at_the_write() -> None:
    from event_ingest.core import http

    def unchecked(self):
        self.written = True

    http.Guard.before_write = unchecked


def unanswered_wait_only_after_timeouts() -> None:
    import httpcore

    from event_ingest.core import client

    def timeouts_only(source, written, exc):
        return (
            source.timeout_s + source.min_interval_s if written and isinstance(exc, httpcore.TimeoutException) else 0.0
        )

    client.unanswered_defer = timeouts_only


MUTANTS = {
    m.name: m
    for m in (
        Mutant(
            "gate_spacing_halved",
            "spacing gate: interval",
            "no_spacing_violation",
            ("core/test_gate.py::test_two_processes_never_get_grants_within_the_interval",),
            gate_spacing_halved,
        ),
        Mutant(
            "gate_no_wait_after_state_lost",
            "spacing gate: wait out a hold after state lost",
            "gate_waits_after_state_lost",
            ("core/test_gate.py::test_lost_state_waits_out_a_full_hold",),
            gate_no_wait_after_state_lost,
        ),
        Mutant(
            "gate_old_era_records_trusted",
            "spacing gate: records written before the new era are distrusted",
            "gate_waits_after_failover_behind",
            ("core/test_gate.py::test_a_promoted_replica_that_missed_a_grant_waits_a_hold",),
            gate_old_era_records_trusted,
        ),
        Mutant(
            "gate_server_change_unnoticed",
            "spacing gate: an era written by another server (a restart, a promoted replica) is a new era",
            "gate_waits_after_old_snapshot",
            ("core/test_gate.py::test_a_restart_from_an_old_snapshot_waits_a_hold",),
            gate_server_change_unnoticed,
        ),
        Mutant(
            "gate_evictions_unnoticed",
            "spacing gate: an eviction since the era began puts every missing record in doubt",
            "gate_waits_after_eviction",
            ("core/test_gate.py::test_an_evicted_record_waits_a_hold",),
            gate_evictions_unnoticed,
        ),
        Mutant(
            "retry_after_ignored",
            "spacing gate: Retry-After",
            "retry_after_honoured",
            ("core/test_gate.py::test_retry_after_pushes_every_consumer_back",),
            retry_after_ignored,
        ),
        Mutant("cursor_skips_an_id", "cursor", "nothing_lost", ("core/test_drain.py",), cursor_skips_an_id),
        Mutant(
            "fence_epoch_clause_removed",
            "fence: epoch clause",
            "stale_commit_fenced",
            ("core/test_store.py::test_a_commit_after_another_holder_bumped_the_epoch_is_refused",),
            fence_epoch_clause_removed,
        ),
        Mutant(
            "fence_cursor_clause_removed",
            "fence: cursor clause",
            None,
            ("core/test_store.py::test_a_commit_from_a_wrong_cursor_is_refused",),
            fence_cursor_clause_removed,
            note="every takeover bumps the epoch, so the epoch clause refuses every stale holder the harness "
            "can make; a current epoch with a stale cursor takes a bug in the drain itself",
        ),
        Mutant(
            "lease_released_without_owner_check",
            "lease: compare-and-delete",
            "lease_kept_by_taker",
            ("core/test_lease.py::test_release_by_a_non_owner_leaves_the_lease_alone",),
            lease_released_without_owner_check,
        ),
        Mutant(
            "page_committed_twice",
            "one page, one write",
            "no_row_written_twice_in_a_commit",
            ("core/test_store.py::test_a_commit_writes_each_row_of_its_page_once",),
            page_committed_twice,
        ),
        Mutant(
            "stale_slot_timed_from_the_answer",
            "spacing gate: a slot's age counted from when it was asked for",
            None,
            ("core/test_gate.py::test_a_slot_that_went_stale_before_sending_is_given_back_unused",),
            stale_slot_timed_from_the_answer,
            note="chaos reaches it only when a SIGSTOP lands while a grant's answer is on its way (a few in a "
            "hundred stops); the unit test holds the answer back on purpose",
        ),
        Mutant(
            "send_by_not_checked_at_the_write",
            "spacing gate: the slot checked where the request is written",
            None,
            ("core/test_client.py::test_a_request_is_never_written_after_its_slot_went_stale",),
            send_by_not_checked_at_the_write,
            note="the window it guards is microseconds wide unless connecting is slow: a unit test makes it so",
        ),
        Mutant(
            "unanswered_wait_only_after_timeouts",
            "spacing gate: the unanswered wait after any failure once the request was written",
            None,
            ("core/test_unanswered.py::test_a_reset_after_the_request_was_written_waits_as_long_as_a_timeout",),
            unanswered_wait_only_after_timeouts,
            note="seen at the source only when it reads a request late from its backlog",
        ),
    )
}


def apply(name: str) -> None:
    if name not in MUTANTS:
        raise SystemExit(f"{ENV}={name!r}: no such mutant; known: {', '.join(MUTANTS)}")
    MUTANTS[name].patch()


def apply_from_env() -> None:
    name = os.environ.get(ENV)
    if name:
        apply(name)
