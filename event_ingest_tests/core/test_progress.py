"""The drain's values without a drain: counters add and subtract, the retry policy's verdicts."""

from __future__ import annotations

from event_ingest.core.client import Kind, Outcome
from event_ingest.core.progress import Counters, DrainOptions, DrainStats, DrainStatus
from event_ingest.core.retry import after_failure
from event_ingest_tests.conftest import source_config


def test_counters_add_up_and_a_window_is_a_difference():
    first = Counters(events_stored=10, pages=2, requests=3) + Counters.ended(DrainStatus.FENCED)
    second = Counters(events_stored=5, pages=1, requests=1, errors=1) + Counters.ended(DrainStatus.STOPPED)
    total = first + second
    assert (total.events_stored, total.pages, total.requests, total.errors) == (15, 3, 4, 1)
    assert total.drain_ends == {DrainStatus.FENCED: 1, DrainStatus.STOPPED: 1}
    window = total - first
    assert window == second  # drain ends that did not change are left out of a window
    assert (total - total).drain_ends == {} and total - total == Counters()
    assert total.drain_ends["fenced"] == 1  # the status reads as its value


def test_stats_read_their_counts_flat():
    stats = DrainStats("s", status=DrainStatus.CAUGHT_UP, counts=Counters(events_stored=7, requests=2))
    flat = stats.to_dict()
    assert (stats.events_stored, flat["events_stored"], flat["requests"], flat["status"]) == (7, 7, 2, "caught_up")
    assert "counts" not in flat and stats.ok
    stats.set_gaps([0.0, 0.2, 0.5])
    assert (stats.min_gap_ms, stats.median_gap_ms) == (200.0, 250.0)


def test_the_retry_policy():
    source = source_config("s", "http://127.0.0.1:1", max_attempts=3)
    opts = DrainOptions(backoff_base_s=1.0, backoff_max_s=3.0)
    failed = Outcome(Kind.RETRY, reason="HTTP 500")

    def verdict(outcome, attempt, left=100.0):
        return after_failure(source, outcome, attempt, cursor=7, budget_left_s=left, opts=opts)

    assert verdict(Outcome(Kind.FATAL, reason="HTTP 404"), 1).give_up == "source 's' at lastId=7: HTTP 404"
    assert not verdict(Outcome(Kind.FATAL, reason="HTTP 404"), 1).transient
    assert 0.5 <= verdict(failed, 1).backoff_s <= 1.0 and verdict(failed, 1).give_up is None
    assert 1.0 <= verdict(failed, 2).backoff_s <= 2.0  # doubles, with jitter
    assert verdict(failed, 3).give_up == "source 's' at lastId=7: 3 attempts failed, last: HTTP 500"
    told = Outcome(Kind.RETRY, reason="HTTP 429", retry_after_s=5.0)
    assert (verdict(told, 1).backoff_s, verdict(told, 1).retry_after_s, verdict(told, 1).give_up) == (0.0, 5.0, None)
    assert verdict(told, 1, left=4.0).give_up == "source 's' asked to wait 5s (Retry-After)"
