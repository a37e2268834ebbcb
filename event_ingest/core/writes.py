"""A drain's writes to Postgres, each counting the requests sent since the last write that landed.

The client counts the requests it sends (``SourceClient.requests``); Postgres keeps per-source counters
of them, updated in the same statement as the write they ride on (a commit, a poll mark, a failed
attempt), so the counters never run ahead of or behind the work. This is the one place that hands the
count to the store: a write that fails hands nothing over, and the next one carries those requests too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .page import Event, Quarantined
from .store import CommitResult, Store

T = TypeVar("T")


class CountedWrites:
    """The store writes of one drain of ``source``; ``sent()`` is how many requests went out so far."""

    def __init__(self, store: Store, source: str, sent: Callable[[], int]) -> None:
        self.store = store
        self.source = source
        self._sent = sent
        self._counted = 0  # requests already added to Postgres' counters by a write of this drain

    @property
    def uncounted(self) -> int:
        return self._sent() - self._counted

    def _write(self, write: Callable[[int], T]) -> T:
        requests = self.uncounted
        result = write(requests)
        self._counted += requests
        return result

    def commit_page(
        self, *, epoch: int, old_cursor: int, new_cursor: int, events: list[Event], quarantined: list[Quarantined]
    ) -> CommitResult:
        """One page, one transaction, fenced (raises the store's ``Fenced``, ``StoreError``)."""
        return self._write(
            lambda requests: self.store.commit_page(
                self.source,
                epoch=epoch,
                old_cursor=old_cursor,
                new_cursor=new_cursor,
                events=events,
                quarantined=quarantined,
                requests=requests,
            )
        )

    def mark_polled(self, epoch: int) -> bool:
        """The source was polled (nothing new): False if the fence refused the mark (taken over)."""
        return self._write(lambda requests: self.store.mark_polled(self.source, epoch, requests=requests))

    def record_failure(self, *, error: str, bad_body: Quarantined | None, at_cursor: int | None) -> None:
        """A failed attempt: the counters, the reason, and the body if it was not a page."""
        self._write(
            lambda requests: self.store.record_failure(
                self.source, requests=requests, error=error, bad_body=bad_body, at_cursor=at_cursor
            )
        )

    def record_rest(self) -> int:
        """The requests no write counted yet, on their own (a drain ending); returns how many (0: none)."""
        if self.uncounted <= 0:
            return 0

        def record(requests: int) -> int:
            self.store.record_requests(self.source, requests)
            return requests

        return self._write(record)
