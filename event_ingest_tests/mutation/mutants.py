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


def _replace_in_prelude(old: str, new: str) -> None:
    """Break the era prelude in every gate script that runs it (acquire, close-and-reserve): a guard
    broken in one script only is still kept by the other, and the mutant would test nothing."""
    from event_ingest.core import gate_lua  # where Gate() reads its scripts

    scripts = [n for n in dir(gate_lua) if n.endswith("_LUA") and gate_lua.ERA_PRELUDE in getattr(gate_lua, n)]
    if len(scripts) < 2:
        raise RuntimeError(f"mutant: the era prelude runs in {scripts} only; expected acquire and close-and-reserve")
    for name in scripts:
        _replace(gate_lua, name, old, new)


def gate_spacing_halved() -> None:
    from event_ingest.core import gate

    init = gate.Gate.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.interval_us //= 2

    gate.Gate.__init__ = __init__


def gate_no_wait_after_state_lost() -> None:

    # A missing record is taken for a new source: granted at once, whatever may be in flight.
    _replace_in_prelude("next_at, hold_until, holder = lost + hold, nil, nil", "next_at = now")


def gate_old_era_records_trusted() -> None:

    # A record written before the new era is read as the whole truth: an old next slot, no reservation.
    _replace_in_prelude("elseif record[1] and record[1] ~= era_id then", "elseif false then")


def gate_evictions_unnoticed() -> None:

    # An eviction since the era began is not seen: a record gone with its reservation reads as a new source.
    _replace_in_prelude("elseif era[4] ~= evicted then", "elseif false then")


def gate_server_change_unnoticed() -> None:

    # Only a missing era opens a new one: a restarted or promoted server's old era (and records) look current.
    _replace_in_prelude("if not era_id or era[3] ~= server then", "if not era_id then")


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
    _replace(store, "COMMIT_SMALL_PAGE_SQL", " AND epoch = %(epoch)s", "")  # the same fence, a small page's


def fence_cursor_clause_removed() -> None:
    from event_ingest.core.store import commit as store  # where the fenced commit reads its SQL

    _replace(store, "ADVANCE_CURSOR_SQL", " AND cursor = %(old_cursor)s", "")
    _replace(store, "COMMIT_SMALL_PAGE_SQL", " AND cursor = %(old_cursor)s", "")  # the same fence, a small page's


def lease_released_without_owner_check() -> None:
    from event_ingest.core import lease

    release = lease.Lease.release

    def unchecked(self):
        release(self)
        self._lock.redis.delete(self.key)  # whoever holds it now

    lease.Lease.release = unchecked


def page_committed_twice() -> None:
    from event_ingest.core.store import commit, operations  # where a page commit and a requeue find store_page

    store_page = commit.store_page

    def twice(cur, source, events, quarantined, at_cursor):
        quarantined = list(quarantined)
        result = store_page(cur, source, events, quarantined, at_cursor)
        store_page(cur, source, events, quarantined, at_cursor)
        return result

    commit.store_page = operations.store_page = twice
    # A small page goes in one statement: the same mistake there is its rows listed twice.
    rows = "FROM unnest(%(ids)s::bigint[], %(payloads)s::text[]) AS u(event_id, payload)"
    _replace(
        commit,
        "COMMIT_SMALL_PAGE_SQL",
        rows,
        "FROM (SELECT * FROM unnest(%(ids)s::bigint[], %(payloads)s::text[]) UNION ALL "
        "SELECT * FROM unnest(%(ids)s::bigint[], %(payloads)s::text[])) AS u(event_id, payload)",
    )


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


def check_reads_in_two_transactions() -> None:
    import contextlib

    from event_ingest.core.store import reads

    @contextlib.contextmanager
    def each_read_its_own(self):
        yield self  # the reads over the pool: every read its own transaction, as before snapshots

    reads.Reads.snapshot = each_read_its_own


class _HighestReadFirst:
    """A commit's cursor that reads the highest stored id before the fence's UPDATE (and answers the
    split's own read with that early value): rows committed by a writer it queued behind are not seen."""

    def __init__(self, cur, commit) -> None:
        self._cur, self._commit = cur, commit
        self._early = self._answer = None

    def execute(self, query, params=None, **kwargs):
        self._answer = None
        if query == self._commit.ADVANCE_CURSOR_SQL:
            self._early = self._cur.execute(self._commit.HIGHEST_STORED_ID_SQL, {"source": params["source"]}).fetchone()
        elif query == self._commit.HIGHEST_STORED_ID_SQL and self._early is not None:
            self._answer = self._early
            return self
        self._cur.execute(query, params, **kwargs)
        return self

    def fetchone(self):
        return self._answer if self._answer is not None else self._cur.fetchone()

    def __getattr__(self, name):
        return getattr(self._cur, name)


def highest_id_read_before_the_fence() -> None:
    from event_ingest.core.store import commit, connections

    run = connections.Connections.run
    connections.Connections.run = lambda self, what, fn: run(self, what, lambda cur: fn(_HighestReadFirst(cur, commit)))


def counting_trigger_off_by_one() -> None:
    from event_ingest.core.store import schema  # where apply_schema reads the trigger functions

    _replace(
        schema,
        "COUNTERS_SQL",
        "count(*) AS events\n        FROM new_rows",
        "count(*) + 1 AS events\n        FROM new_rows",
    )


def commit_lands_twice_across_a_retry() -> None:
    from event_ingest.core.store import commit

    commit_page = commit.Commits.commit_page

    def retried(self, source, *, events, quarantined=(), **kwargs):
        result = commit_page(self, source, events=events, quarantined=quarantined, **kwargs)
        # "The acknowledgement was lost": the page written again in a transaction of its own, outside the fence.
        self.connections.run("retry", lambda cur: commit.store_page(cur, source, events, (), None))
        return result

    commit.Commits.commit_page = retried


def audit_never_moves_on() -> None:
    from event_ingest.core.store import audit

    _replace(audit, "SAVE_AUDIT_SQL", "SET next_block = %(next_block)s,", "SET next_block = next_block,")


def stuck_drain_ends_caught_up() -> None:
    from event_ingest.core.drain import Drain  # (event_ingest.core.drain, not the function core exports)

    Drain._stuck = Drain._caught_up


def reserved_slot_used_however_late() -> None:
    from event_ingest.core import gate

    gate.Gate._still_usable = lambda self, reserved, now: True


def reserved_slot_kept_at_stop() -> None:
    from event_ingest.core import gate

    gate.Gate.give_back = lambda self: None


def freshness_watch_trusts_never_polled() -> None:
    from event_ingest.component import freshness

    # A source with no poll on record is taken as on time, forever: a source whose runs never start stays green.
    find_late = freshness.find_late

    def mutated(sources, ages, unpolled_since, now):
        late, seen = find_late(sources, ages, unpolled_since, now)
        return [item for item in late if item.age_s is not None], seen

    freshness.find_late = mutated


def freshness_watch_asks_once_per_source() -> None:
    from event_ingest.component import freshness

    # The run key names the source alone: a source late again after a recovery is never checked again.
    freshness.Late.run_key = property(lambda self: f"late:{self.source}")


def alerts_read_one_page_per_tick() -> None:
    from event_ingest.component.alerts import check_results

    # Every tick is past its budget at once: one page read per tick, and a busy instance's alerts fall behind.
    check_results.READ_BUDGET_S = -1.0


def slot_claim_ignored() -> None:
    from event_ingest.component import sensors

    # Every sensor of a slot asks: a slot gets a run per sensor ticking at the same moment.
    sensors.claim_slot = lambda client, slot_key, sensor: (True, sensor)


def _wrap_everywhere(module, name: str, wrap: Callable) -> None:
    """Replace ``module.name`` by ``wrap(original)`` there and in every loaded event_ingest module that
    imported it by name: the mutant breaks what the engine calls, wherever the call site reads it from."""
    import importlib
    import pkgutil
    import sys

    import event_ingest.core

    for info in pkgutil.walk_packages(event_ingest.core.__path__, "event_ingest.core."):
        importlib.import_module(info.name)
    original = getattr(module, name)
    mutated = wrap(original)
    patched = [
        m.__name__
        for m in list(sys.modules.values())
        if getattr(m, "__name__", "").startswith("event_ingest.") and getattr(m, name, None) is original
    ]
    for found in patched:
        setattr(sys.modules[found], name, mutated)
    if module.__name__ not in patched:
        raise RuntimeError(f"mutant: {module.__name__}.{name} is not where the engine reads it")


def page_invents_an_event() -> None:
    from event_ingest.core import page

    # Every page gains an item the source never served (a negative id, so it takes no id the source will serve).
    def wrap(parse_page):
        def inventing(body, **kwargs):
            parsed = parse_page(body, **kwargs)
            if parsed.events:
                parsed.events.append(page.Event(-parsed.events[0].id, '{"invented": true}'))
            return parsed

        return inventing

    _wrap_everywhere(page, "parse_page", wrap)


def malformed_items_dropped() -> None:
    from event_ingest.core import page

    # An item that cannot be read is dropped rather than quarantined: received, then silently lost.
    def wrap(parse_page):
        def dropping(body, **kwargs):
            parsed = parse_page(body, **kwargs)
            parsed.quarantined.clear()
            return parsed

        return dropping

    _wrap_everywhere(page, "parse_page", wrap)


def cursor_left_one_behind() -> None:
    from event_ingest.core import page

    next_cursor = page.Page.next_cursor

    # The cursor stops one id short of the page's highest: the last event is fetched again, forever on a quiet source.
    def behind(self, cursor):
        moved = next_cursor(self, cursor)
        return moved - 1 if moved > cursor else cursor

    page.Page.next_cursor = behind


def redis_down_taken_as_granted() -> None:
    import time

    from event_ingest.core import gate, lease

    # Fail open, both guards: with Redis unreachable the lease is taken as held and the gate grants locally,
    # blind to every other consumer. (Either guard alone still stops requests: a drain that cannot take the
    # lease never asks the gate, and one already holding it ends at the gate's first refusal.)
    try_acquire = gate.Gate.try_acquire

    def open_when_down(self):
        try:
            return try_acquire(self)
        except gate.GateUnavailable:
            return True, int(time.time() * 1_000_000)

    take = lease.Lease.acquire

    def held_when_down(self, should_stop=None):
        try:
            return take(self, should_stop)
        except lease.LeaseUnavailable:
            return True

    gate.Gate.try_acquire = open_when_down
    lease.Lease.acquire = held_when_down


def worker_heartbeat_unguarded() -> None:
    from event_ingest.core import worker

    # The heartbeat lets a Redis error escape: an outage ends the consumer's process instead of pausing it.
    def beat(self):
        self._redis.set(
            worker.HEARTBEAT_PREFIX + self.id, self.heartbeat.to_json(), px=int(self.options.heartbeat_ttl_s * 1000)
        )

    worker.Worker._beat = beat


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
        Mutant(
            "check_reads_in_two_transactions",
            "checks: one snapshot",
            None,
            ("core/test_checks_beside_commits.py",),
            check_reads_in_two_transactions,
            note="the ledger reads Postgres after the run, not the checks; a check reading two transactions is "
            "wrong only while commits land beside it, as in its unit test",
        ),
        Mutant(
            "highest_id_read_before_the_fence",
            "commit: COPY/INSERT split read under the fence",
            None,
            ("core/test_store.py::test_ids_stored_while_a_commit_waits_on_the_fence_are_not_copied_again",),
            highest_id_read_before_the_fence,
            note="every other writer of a source bumps the epoch first, so a commit that queued behind one is "
            "fenced before its split; it takes a writer holding the fence at the same epoch, as its unit test does",
        ),
        Mutant(
            "counting_trigger_off_by_one",
            "counting triggers",
            None,
            ("core/test_counter_audit.py::test_counters_agree_with_the_rows_after_every_kind_of_write",),
            counting_trigger_off_by_one,
            note="the ledger compares rows, ids and cursors, not the counters the checks add up",
        ),
        Mutant(
            "commit_lands_twice_across_a_retry",
            "one page, one commit",
            "no_id_committed_twice",
            ("core/test_store.py::test_a_commit_writes_each_row_of_its_page_once",),
            commit_lands_twice_across_a_retry,
        ),
        Mutant(
            "audit_never_moves_on",
            "counter audit: goes round every block",
            None,
            ("core/test_counter_audit.py::test_the_audit_goes_round_every_block_within_its_bound",),
            audit_never_moves_on,
            note="the ledger makes no counter drift for the audit to find",
        ),
        Mutant(
            "stuck_drain_ends_caught_up",
            "drain: stuck is not caught up",
            None,
            ("core/test_status.py::test_a_drain_stopped_before_an_unreadable_item_ends_stuck_not_caught_up",),
            stuck_drain_ends_caught_up,
            note="the chaos schedule serves no item without a readable id",
        ),
        Mutant(
            "reserved_slot_used_however_late",
            "spacing gate: a reserved slot used within its send-by time",
            None,
            ("core/test_gate.py::test_a_reserved_slot_used_late_is_given_back_and_asked_for_anew",),
            reserved_slot_used_however_late,
            note="like any grant read late, reached by chaos only when a pause lands between a close and the next "
            "request; the unit test pauses on purpose",
        ),
        Mutant(
            "reserved_slot_kept_at_stop",
            "spacing gate: a stopping holder gives its reserved slot back",
            None,
            ("core/test_gate.py::test_a_reserved_slot_is_used_at_once_and_given_back_when_the_holder_stops",),
            reserved_slot_kept_at_stop,
            note="costs a handoff a hold of pause at the source; spacing itself holds, so no ledger check fails",
        ),
        Mutant(
            "freshness_watch_trusts_never_polled",
            "freshness watch: a source never polled is late after its max_lag_s",
            None,
            (
                "component/test_freshness_watch.py::"
                "test_a_source_never_polled_is_late_once_the_watch_saw_it_unpolled_for_its_max_lag",
            ),
            freshness_watch_trusts_never_polled,
            note="the chaos harness runs no Dagster: the unit test ticks the watch as the daemon would",
        ),
        Mutant(
            "freshness_watch_asks_once_per_source",
            "freshness watch: one check run per late episode (a new one after each recovery)",
            None,
            (
                "component/test_freshness_watch.py::test_a_late_source_no_run_hosts_turns_fresh_red_and_one_run_per_episode",
            ),
            freshness_watch_asks_once_per_source,
            note="the chaos harness runs no Dagster: the unit test ticks the watch as the daemon would",
        ),
        Mutant(
            "alerts_read_one_page_per_tick",
            "check alerts: a tick reads until caught up",
            None,
            ("component/test_alerts.py::test_one_tick_reads_every_result_since_the_last_not_one_page",),
            alerts_read_one_page_per_tick,
            note="the chaos harness runs no Dagster: the unit test reads a real instance's event log",
        ),
        Mutant(
            "slot_claim_ignored",
            "sensors: one run asked for per slot, whichever of its sensors ticks first",
            None,
            ("component/test_hosting.py::test_the_sensors_of_one_slot_ask_for_one_run_between_them",),
            slot_claim_ignored,
            note="the chaos harness runs no Dagster: the unit test ticks a slot's sensors as the daemon would",
        ),
        Mutant(
            "worker_heartbeat_unguarded",
            "worker: a Redis outage pauses a consumer, never ends it",
            "no_consumer_crash",
            ("core/test_worker_outage.py",),
            worker_heartbeat_unguarded,
        ),
        Mutant(
            "page_invents_an_event",
            "page: only what the source served is stored",
            "stored_equals_served",
            ("core/test_page.py::test_a_good_page",),
            page_invents_an_event,
        ),
        Mutant(
            "malformed_items_dropped",
            "page: an unreadable item is quarantined, never dropped",
            "malformed_all_quarantined",
            ("core/test_page.py::test_bad_items_are_quarantined_with_a_reason",),
            malformed_items_dropped,
        ),
        Mutant(
            "cursor_left_one_behind",
            "cursor: the page's highest id accounted for",
            "cursor_is_max_stored_id",
            ("core/test_page.py::test_a_good_page",),
            cursor_left_one_behind,
        ),
        Mutant(
            "redis_down_taken_as_granted",
            "spacing gate and lease: no request without Redis",
            "no_request_while_redis_down",
            ("core/test_gate.py::test_unreachable_redis_grants_nothing",),
            redis_down_taken_as_granted,
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
