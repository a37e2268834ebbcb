"""What the store's reads return: one frozen value per kind of row (reads.py runs the statements)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .schema import ID_BLOCK_BITS


@dataclass(frozen=True)
class SourceStatus:
    source: str
    cursor: int
    epoch: int
    events: int
    max_event_id: int
    quarantined: int
    fenced_commits: int
    last_ingest_at: datetime | None
    last_poll_at: datetime | None = None  # the last successful poll (a page committed, or nothing new)
    created_at: datetime | None = None
    requests: int = 0  # sent to the source, as flushed by drains (a drain in progress holds a few back)
    errors: int = 0  # of them, failed attempts
    recent_error_rate: float | None = None  # failed / sent, decaying with a time constant of an hour
    last_error: str | None = None
    last_error_at: datetime | None = None
    poll_age_s: float | None = None  # seconds since the last successful poll, on Postgres' clock


@dataclass(frozen=True)
class SourceActivity:
    source: str
    created_at: datetime
    last_active_at: datetime  # the last commit or poll, or when the state was made


@dataclass(frozen=True)
class Gap:
    first_missing: int
    last_missing: int

    @property
    def size(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass(frozen=True)
class Stuck:
    quarantine_id: int
    reason: str
    at_cursor: int
    seen_count: int
    last_seen_at: datetime


@dataclass(frozen=True)
class BlockDrift:
    """A block whose counter disagrees with the rows it holds (as last verified)."""

    block: int
    counted: int  # ids id_blocks says the block holds
    rows: int  # rows the block holds

    @property
    def first_id(self) -> int:
        return self.block << ID_BLOCK_BITS

    @property
    def last_id(self) -> int:
        return self.first_id + (1 << ID_BLOCK_BITS) - 1


@dataclass(frozen=True)
class CounterDrift:
    blocks: tuple[BlockDrift, ...]
    found_at: datetime  # when the audit last found one of them


@dataclass(frozen=True)
class IdSpan:
    """Lowest and highest id of a source among stored events and quarantined items (None: none)."""

    lowest_stored: int | None
    highest_stored: int | None
    lowest_quarantined: int | None
    highest_quarantined: int | None

    @property
    def lowest(self) -> int | None:
        return min((i for i in (self.lowest_stored, self.lowest_quarantined) if i is not None), default=None)

    @property
    def highest(self) -> int | None:
        return max((i for i in (self.highest_stored, self.highest_quarantined) if i is not None), default=None)
