"""The checks on a source's stored events, answered from counters so they cost the same at any size.

``gap_check``: the ids accounted for (stored, or quarantined with their id) must fill the span from
the lowest to the highest. The counters (``id_blocks``, kept by triggers whoever writes) give the
count per block of 65,536 ids; a block holding fewer ids than its share of the span has a gap, and
the number missing is exact without reading a single id. Only when something is missing are the
incomplete blocks read, a bounded number of them, to name the ranges. It also fails while the
counter audit has found blocks whose counter disagrees with the rows (writes that bypassed the
triggers), naming them and the recount that repairs them.

``cursor_check``: the cursor equals the highest id accounted for (two index probes).

``quarantine_check``: nothing was quarantined (a warning: the items are kept, not lost).

Each check reads everything it compares in one snapshot (``Store.snapshot``: one REPEATABLE READ
transaction), so a commit landing while it runs is wholly in what it reads or wholly out of it; two
separate reads would let a commit fall between them and the arithmetic would be wrong either way (a
real gap reported as none, a clean source reported failing).

``verify_counters``: the counter audit, for a schedule: a bounded part of each source's counters
recounted from the rows per call, going round them (the bound on how long drift can go unseen is in
``core/store/audit.py``).

Every result says what it saw in numbers a caller can show (Dagster metadata, the CLI); lists cut
short say so ("first 20 of 57").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from .store import BlockDrift, CounterAudit, Gap, Reads, Store, StoreError
from .store.audit import COUNTER_BLOCKS_PER_CALL, drift_summary
from .store.schema import ID_BLOCK_BITS, ID_BLOCK_SIZE

GAPS_LISTED = 20  # ranges named in a result; the counts are always whole
BLOCKS_SCANNED = 16  # incomplete blocks read to name ranges: at most 16 x 65,536 ids per check


@dataclass(frozen=True)
class GapCheck:
    passed: bool
    lowest: int | None  # lowest id accounted for (None: nothing stored or quarantined with an id)
    highest: int | None
    accounted: int  # distinct ids stored or quarantined with their id
    missing: int  # ids missing between lowest and highest: exact, from the counters
    gaps: list[Gap] = field(default_factory=list)  # the first ranges located, ascending
    ranges: int = 0  # missing ranges located; the total if ranges_complete, else a lower bound
    ranges_complete: bool = True  # every incomplete block was read
    missing_located: int = 0  # ids in the ranges located; equals `missing` when complete, unless counters drifted
    blocks_incomplete: int = 0
    blocks_scanned: int = 0
    # Blocks the counters say hold more ids than they can: counters out of step with the rows
    # (triggers bypassed); then gaps can hide, so the check fails until the source is recounted.
    blocks_overcounted: int = 0
    # Blocks the counter audit found disagreeing with the rows, not recounted since: the check fails.
    drift: tuple[BlockDrift, ...] = ()
    source: str = ""

    @property
    def listed(self) -> str:
        """The ranges as text, saying whether the list is whole: "500-510", "first 20 of 57: ..."."""
        text = ", ".join(f"{g.first_missing}-{g.last_missing}" for g in self.gaps) or "none"
        if len(self.gaps) == self.ranges and self.ranges_complete:
            return text
        if not self.gaps:
            return f"not located ({self.missing} ids missing)"
        of = f"{self.ranges}" if self.ranges_complete else f"at least {self.ranges}"
        return f"first {len(self.gaps)} of {of}: {text}"

    def summary(self) -> str:
        if self.drift:
            return drift_summary(self.source, self.drift)
        recount = f"run `event-ingest recount {self.source}`"
        if self.blocks_overcounted:
            return (
                f"id counters disagree with the stored rows in {self.blocks_overcounted} blocks "
                f"(writes that bypassed the triggers?): {recount}"
            )
        if self.missing == 0:
            return "no gaps" if self.highest is not None else "nothing stored yet"
        if self.ranges_complete and self.missing_located != self.missing:
            return (
                f"id counters say {self.missing} ids are missing, the rows show {self.missing_located} "
                f"(writes that bypassed the triggers?): {recount}"
            )
        return f"{self.missing} ids missing in {self.ranges}{'' if self.ranges_complete else '+'} ranges: {self.listed}"


@dataclass(frozen=True)
class CursorCheck:
    passed: bool
    cursor: int | None  # None: the source has no state row yet
    highest: int  # highest id accounted for, 0 if none

    def summary(self) -> str:
        if self.cursor is None:
            return "source not ingested yet"
        return f"cursor {self.cursor}, highest id accounted for {self.highest}"


@dataclass(frozen=True)
class QuarantineCheck:
    passed: bool
    quarantined: int
    last_reason: str | None


@dataclass(frozen=True)
class _Window:
    first: int
    last: int
    whole: bool  # nothing in it is accounted for: all of it is missing, no need to read it


def gap_check(
    store: Store | Reads, source: str, *, listed: int = GAPS_LISTED, scan_blocks: int = BLOCKS_SCANNED
) -> GapCheck:
    """Ids missing between the lowest and highest accounted-for id of a source, read in one snapshot.

    Cost without gaps: five index probes and one row per block (458 at 30 million ids). With gaps,
    plus at most ``scan_blocks`` blocks read to name the ranges; ``scan_blocks=0`` counts only."""
    with store.snapshot() as snap:
        drift = snap.counter_drift(source)
        span = snap.id_span(source)
        lowest, highest = span.lowest, span.highest
        if lowest is None:
            if drift is not None:  # rows the counters still count, though none are left
                return GapCheck(
                    passed=False,
                    lowest=None,
                    highest=None,
                    accounted=0,
                    missing=0,
                    ranges_complete=False,
                    drift=drift.blocks,
                    source=source,
                )
            return GapCheck(passed=True, lowest=None, highest=None, accounted=0, missing=0, source=source)
        assert highest is not None  # one span: both ends or neither
        blocks = snap.accounted_blocks(source)
        accounted = sum(n for _, n in blocks)
        windows, overcounted = _incomplete_windows(blocks, lowest, highest)
        seen = GapCheck(
            passed=False,
            lowest=lowest,
            highest=highest,
            accounted=accounted,
            missing=0,
            blocks_incomplete=sum(1 for w in windows if not w.whole),
            drift=drift.blocks if drift is not None else (),
            source=source,
        )
        if overcounted:
            return dataclasses.replace(
                seen,
                missing=max(highest - lowest + 1 - accounted, 0),
                ranges_complete=False,
                blocks_overcounted=overcounted,
            )
        missing = highest - lowest + 1 - accounted  # >= 0: no block holds more than its share
        if missing == 0:
            return dataclasses.replace(seen, passed=drift is None)
        gaps, scanned, complete = _locate(snap, source, windows, scan_blocks)
    return dataclasses.replace(
        seen,
        missing=missing,
        gaps=gaps[:listed],
        ranges=len(gaps),
        ranges_complete=complete,
        missing_located=sum(g.size for g in gaps),
        blocks_scanned=scanned,
    )


def _incomplete_windows(blocks: list[tuple[int, int]], lowest: int, highest: int) -> tuple[list[_Window], int]:
    """The id windows that may hold missing ids, ascending, and how many blocks hold too many.

    A block present in the counters with fewer ids than its part of [lowest, highest] is read later;
    a run of blocks absent from the counters is missing whole."""
    windows: list[_Window] = []
    overcounted = 0
    expected_next = lowest >> ID_BLOCK_BITS  # the next block that should appear
    for block, ids in blocks:
        first = max(lowest, block << ID_BLOCK_BITS)
        last = min(highest, (block << ID_BLOCK_BITS) + ID_BLOCK_SIZE - 1)
        if block > expected_next:
            windows.append(_Window(max(lowest, expected_next << ID_BLOCK_BITS), (block << ID_BLOCK_BITS) - 1, True))
        expected_next = block + 1
        if first > last or ids > last - first + 1:
            overcounted += 1  # ids counted outside the span, or more than the block can hold
        elif ids < last - first + 1:
            windows.append(_Window(first, last, ids == 0))
    if (highest >> ID_BLOCK_BITS) >= expected_next:
        windows.append(_Window(max(lowest, expected_next << ID_BLOCK_BITS), highest, True))
    return windows, overcounted


def _locate(store: Store | Reads, source: str, windows: list[_Window], scan_blocks: int) -> tuple[list[Gap], int, bool]:
    """Name the missing ranges window by window, merging ranges that run across a window's edge;
    stop after reading ``scan_blocks`` blocks (the ranges found so far are then a lower bound)."""
    gaps: list[Gap] = []
    scanned = 0
    for window in windows:
        if window.whole:
            found = [Gap(window.first, window.last)]
        elif scanned < scan_blocks:
            found = store.gaps_between(source, window.first, window.last)
            scanned += 1
        else:
            return gaps, scanned, False
        for gap in found:
            if gaps and gaps[-1].last_missing + 1 == gap.first_missing:
                gaps[-1] = Gap(gaps[-1].first_missing, gap.last_missing)
            else:
                gaps.append(gap)
    return gaps, scanned, True


def cursor_check(store: Store | Reads, source: str) -> CursorCheck:
    """The cursor equals the highest id accounted for (stored or quarantined with its id), read in one
    snapshot: a commit moves both, and is seen by both reads or by neither."""
    with store.snapshot() as snap:
        status = snap.source_status(source)
        if status is None:
            return CursorCheck(passed=True, cursor=None, highest=0)
        highest = snap.id_span(source).highest or 0
    return CursorCheck(passed=status.cursor == highest, cursor=status.cursor, highest=highest)


def quarantine_check(store: Store | Reads, source: str) -> QuarantineCheck:
    count, last_reason, _ = store.quarantine_summary(source)  # one statement: one snapshot
    return QuarantineCheck(passed=count == 0, quarantined=count, last_reason=last_reason)


def verify_counters(
    store: Store, sources: Iterable[str], *, blocks: int = COUNTER_BLOCKS_PER_CALL
) -> dict[str, CounterAudit | StoreError]:
    """The counter audit for a schedule: ``blocks`` blocks of each source recounted from its rows and
    compared with the counters (``Store.verify_counters``); drift found is recorded, and ``no_gaps`` fails
    naming it until ``event-ingest recount SOURCE``. A source whose audit failed (its partition gone,
    Postgres refused) is reported as its error; the others are audited all the same."""
    results: dict[str, CounterAudit | StoreError] = {}
    for source in sources:
        try:
            results[source] = store.verify_counters(source, blocks=blocks)
        except StoreError as exc:
            results[source] = exc
    return results
