"""What an operator reads: per-source status, stuck sources, late sources, sources removed or renamed.

Nothing here writes. ``read_status`` needs Postgres only, and reads it in one snapshot (one REPEATABLE
READ, READ ONLY transaction), so every row and every figure in it is of the same moment: a commit landing
meanwhile is in all of them or in none. Redis, when given and reachable, adds whether a drain holds each
source's lease now - without it that column is unknown, not an error.

Late: a configured source polled successfully longer ago than its ``max_lag_s``, or never
(``late_sources``, what ``event-ingest status --check`` exits non-zero on). It is judged from Postgres
alone, on Postgres' clock, so it turns red whether or not anything still runs to poll the source.

Stuck: a source cannot get past its cursor because what is served there cannot be read (``Store.stuck``):
an item with no readable id that the page stops before, or a body that is not a page, quarantined again
and again at the cursor with no successful poll since. ``event-ingest skip`` moves it on.

Renamed: sources are known by name (state, partition, lease, Redis keys), so a name changed in the sources
file is a new source that starts from zero while the old name's state stays. It cannot be told apart from
removing one source and adding another, so it is reported, not acted on: a configured source with no state
(or state made within RENAME_WINDOW of the last activity of one) while a source with state is not
configured any more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import redis

from ..config import SourceConfig
from .checks import gap_check
from .lease import KEY_PREFIX as LEASE_PREFIX
from .store import Reads, SourceActivity, SourceStatus, Store, Stuck

RENAME_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class StuckCheck:
    source: str
    passed: bool
    stuck: Stuck | None

    def summary(self) -> str:
        if self.stuck is None:
            return "not stuck: nothing unreadable holds the cursor"
        s = self.stuck
        return (
            f"stuck at cursor {s.at_cursor}: quarantine item {s.quarantine_id} (seen {s.seen_count} times, last "
            f"{s.last_seen_at:%Y-%m-%d %H:%M:%S %Z}) holds it: {s.reason}. Look at it with `event-ingest quarantine "
            "show "
            f"{s.quarantine_id}`, then move the source past it with `event-ingest skip {self.source} --to-id N`"
        )


def stuck_check(store: Store | Reads, source: str) -> StuckCheck:
    """One index probe (see Store.stuck)."""
    stuck = store.stuck(source)
    return StuckCheck(source, passed=stuck is None, stuck=stuck)


@dataclass(frozen=True)
class Rename:
    old: str  # has state, not configured
    new: str  # configured, no state or state made soon after the old one stopped
    old_last_active_at: datetime
    new_created_at: datetime | None  # None: no state yet (it starts from zero at its first drain)

    def summary(self) -> str:
        started = (
            "has no state yet: its first drain starts from zero"
            if self.new_created_at is None
            else f"started from zero at {self.new_created_at:%Y-%m-%d %H:%M:%S %Z}"
        )
        return (
            f"possible rename: {self.old!r} (state kept, last active {self.old_last_active_at:%Y-%m-%d %H:%M:%S %Z}) "
            f"is not in the sources file, and {self.new!r} {started}. Names are the key of the cursor, the "
            f"events and the lease: to continue where {self.old!r} stopped, put the old name back"
        )


def suspected_renames(
    configured: list[str], activity: list[SourceActivity], *, without_state_only: bool = False
) -> list[Rename]:
    """Pairs (removed source with state, configured source that started from zero) that may be one source
    renamed. ``without_state_only``: only configured sources that have no state yet (before their first run)."""
    known = {a.source: a for a in activity}
    removed = [a for a in activity if a.source not in set(configured)]
    renames = []
    for old in removed:
        for name in configured:
            new = known.get(name)
            if new is None:
                renames.append(Rename(old.source, name, old.last_active_at, None))
            elif not without_state_only and old.last_active_at <= new.created_at <= old.last_active_at + RENAME_WINDOW:
                renames.append(Rename(old.source, name, old.last_active_at, new.created_at))
    return renames


@dataclass
class SourceRow:
    source: str
    config: str  # "configured", "removed" (state, not in the sources file), "not started", or "?" (file unread)
    cursor: int | None = None
    events: int = 0
    gaps: int = 0
    lag_s: float | None = None  # seconds since the last successful poll
    last_commit: str | None = None
    error_rate: float | None = None  # failed / sent, over about the last hour (decaying)
    requests: int = 0
    errors: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    quarantined: int = 0  # open items
    fenced: int = 0  # commits refused by the fence
    epoch: int | None = None
    lease: bool | None = None  # a drain holds the lease now; None: unknown (no Redis)
    stuck: bool = False
    stuck_reason: str | None = None
    counter_drift: str | None = None  # the counter audit found counters disagreeing with the rows
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StatusReport:
    rows: list[SourceRow]
    renames: list[Rename]
    notes: list[str]  # about the report as a whole (Redis unknown, sources file unread)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def leases_held(client: redis.Redis, names: list[str]) -> dict[str, bool]:
    """Which of ``names`` a drain holds the lease of now: one round trip."""
    if not names:
        return {}
    found = client.mget([LEASE_PREFIX + name for name in names])
    return {name: value is not None for name, value in zip(names, found)}


def read_status(
    store: Store,
    configured: list[str] | None,
    redis_client: redis.Redis | None = None,
    redis_problem: str | None = None,
) -> StatusReport:
    """Every source with state, plus configured ones without; ``configured`` None: the sources file was not
    read (removed/renamed unknown). Postgres is read in one snapshot."""
    notes: list[str] = []
    rows: dict[str, SourceRow] = {}
    with store.snapshot() as snap:
        for s in snap.status():
            config = "?" if configured is None else ("configured" if s.source in configured else "removed")
            stuck = stuck_check(snap, s.source)
            # Every missing id counted from the counters, none read.
            gaps = gap_check(snap, s.source, scan_blocks=0)
            rows[s.source] = SourceRow(
                source=s.source,
                config=config,
                cursor=s.cursor,
                events=s.events,
                gaps=gaps.missing,
                lag_s=round(s.poll_age_s, 1) if s.poll_age_s is not None else None,
                last_commit=_iso(s.last_ingest_at),
                error_rate=round(s.recent_error_rate, 4) if s.recent_error_rate is not None else None,
                requests=s.requests,
                errors=s.errors,
                last_error=s.last_error,
                last_error_at=_iso(s.last_error_at),
                quarantined=s.quarantined,
                fenced=s.fenced_commits,
                epoch=s.epoch,
                stuck=not stuck.passed,
                stuck_reason=None if stuck.passed else stuck.summary(),
                counter_drift=gaps.summary() if gaps.drift else None,
            )
        activity = snap.source_activity() if configured is not None else []
    for name in configured or ():
        rows.setdefault(name, SourceRow(source=name, config="not started"))
    renames: list[Rename] = []
    if configured is not None:
        renames = suspected_renames(configured, activity)
        for rename in renames:
            rows[rename.old].notes.append(f"possibly renamed to {rename.new!r}")
            rows[rename.new].notes.append(f"possibly {rename.old!r} renamed (started from zero)")
    else:
        notes.append("sources file not read: removed and renamed sources are not known")
    ordered = [rows[name] for name in sorted(rows)]
    if redis_client is not None:
        try:
            held = leases_held(redis_client, [r.source for r in ordered])
            for row in ordered:
                row.lease = held[row.source]
        except redis.RedisError as exc:
            redis_problem = f"Redis did not answer ({exc})"
    if redis_problem:
        notes.append(f"lease unknown (?): {redis_problem}")
    return StatusReport(ordered, renames, notes)


@dataclass(frozen=True)
class Late:
    """A configured source not polled successfully within its max_lag_s."""

    source: str
    max_lag_s: float
    poll_age_s: float | None  # None: never polled successfully (or no state yet)

    def summary(self) -> str:
        if self.poll_age_s is None:
            return f"{self.source}: late: never polled successfully (max_lag_s {self.max_lag_s:g})"
        return f"{self.source}: late: last successful poll {self.poll_age_s:.1f} s ago (max_lag_s {self.max_lag_s:g})"


def late_sources(statuses: list[SourceStatus], sources: list[SourceConfig]) -> list[Late]:
    """The configured sources past their ``max_lag_s`` (or never polled), in the sources file's order.
    ``statuses``: ``Store.status()`` (one statement: every age on Postgres' clock, of one moment)."""
    ages = {s.source: s.poll_age_s for s in statuses}
    late = []
    for source in sources:
        age = ages.get(source.name)
        if age is None or age > source.max_lag_s:
            late.append(Late(source.name, source.max_lag_s, age))
    return late
