"""Checks answered while commits land: what a check says must be true of one moment.

One writer commits one-event pages to two sources through the real fenced commit, as a tailing
drain of a quiet source does, while the checks run beside it, as an ``ingest`` run does between
commits. One source has a real one-id gap, the other none. A check that reads its values in
two transactions sees a commit land between them and answers wrongly either way: a real gap
reported as none, or a clean source reported failing. The counter audit runs beside them too: counters
kept by the triggers are true, so it must never report drift.
"""

from __future__ import annotations

import threading
import uuid

from event_ingest.core.checks import cursor_check, gap_check
from event_ingest.core.page import Event
from event_ingest.core.status import read_status
from event_ingest.core.store import Store

ITERATIONS = 1500  # rounds of checks (each: both sources' gap and cursor checks); a count, not a duration
STATUS_EVERY = 20  # one `status` read per this many rounds (it reads every source of the database)
AUDIT_EVERY = 10  # one counter audit of each source per this many rounds
STORED = 20  # ids stored in each source before the writer starts; the gap source lacks GAP_ID
GAP_ID = 10


class Writer(threading.Thread):
    """Commits one-event pages to each source in turn through Store.commit_page until stopped."""

    def __init__(self, database_url: str, sources: list[str]) -> None:
        super().__init__(daemon=True)
        self.database_url = database_url
        self.sources = sources
        self.stop = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Store(self.database_url, application_name="checks-beside-commits") as store:
                held = {s: store.begin_epoch(s) for s in self.sources}  # (epoch, cursor)
                while not self.stop.is_set():
                    for source in self.sources:
                        epoch, cursor = held[source]
                        event = Event(cursor + 1, '{"n": 1}')
                        store.commit_page(source, epoch=epoch, old_cursor=cursor, new_cursor=cursor + 1, events=[event])
                        held[source] = (epoch, cursor + 1)
                        self.commits += 1
        except BaseException as exc:  # the test reports it
            self.error = exc


def test_checks_beside_commits_never_answer_wrongly(store, database_url):
    prefix = f"t_{uuid.uuid4().hex[:10]}"
    gapped, clean = f"{prefix}_gap", f"{prefix}_clean"
    for source in (gapped, clean):
        store.ensure_source(source)
        epoch, _ = store.begin_epoch(source)
        ids = range(1, STORED + 1)
        store.commit_page(
            source, epoch=epoch, old_cursor=0, new_cursor=STORED, events=[Event(i, '{"n": 1}') for i in ids]
        )
    # A real gap, made through the triggers: the counters are right, only the row is gone.
    store.conn.execute("DELETE FROM events WHERE source = %s AND event_id = %s", (gapped, GAP_ID))
    store.conn.commit()
    assert (gap_check(store, gapped).missing, gap_check(store, clean).passed) == (1, True)

    wrong = {
        "gap reported as none": 0,
        "clean source reported failing": 0,
        "cursor check failed": 0,
        "status gaps wrong": 0,
        "audit reported drift": 0,
    }
    examples: list[str] = []

    def note(kind: str, text: str) -> None:
        wrong[kind] += 1
        if len(examples) < 5:
            examples.append(f"{kind}: {text}")

    writer = Writer(database_url, [gapped, clean])
    writer.start()
    try:
        commits_before = None
        for round_ in range(ITERATIONS):
            if commits_before is None and writer.commits:
                commits_before = writer.commits
            found = gap_check(store, gapped)
            if found.passed or found.missing != 1:
                note("gap reported as none", found.summary())
            none = gap_check(store, clean)
            if not none.passed:
                note("clean source reported failing", none.summary())
            for source in (gapped, clean):
                cursor = cursor_check(store, source)
                if not cursor.passed:
                    note("cursor check failed", cursor.summary())
            if round_ % AUDIT_EVERY == 0:
                for source in (gapped, clean):
                    audit = store.verify_counters(source, blocks=1)
                    if audit.drift:
                        note("audit reported drift", audit.summary())
            if round_ % STATUS_EVERY == 0:
                rows = {r.source: r for r in read_status(store, [gapped, clean]).rows}
                if (rows[gapped].gaps, rows[clean].gaps) != (1, 0):
                    note("status gaps wrong", f"gaps {rows[gapped].gaps} and {rows[clean].gaps}")
        commits_during = writer.commits - (commits_before or 0)
    finally:
        writer.stop.set()
        writer.join(60)
    assert writer.error is None, repr(writer.error)
    # The race was run: commits landed all through the checks.
    assert commits_during >= ITERATIONS // 10, f"only {commits_during} commits landed beside {ITERATIONS} rounds"
    assert wrong == dict.fromkeys(wrong, 0), (
        f"{wrong} in {ITERATIONS} rounds beside {commits_during} commits; {examples}"
    )
