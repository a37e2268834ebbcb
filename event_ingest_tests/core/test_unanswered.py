"""A request that failed unanswered after it was written: nothing proves it did not reach the source.

It may wait in a queue or a busy server's backlog and be read later, so the next request waits one
more request's life (timeout + interval) after the timeout, not just the interval. Judged at the
source's recorder: the gap between the two arrivals.
"""

from __future__ import annotations

from event_ingest.core import DrainOptions, drain
from event_ingest.core.progress import DrainStatus
from event_ingest_tests.conftest import source_config

TIMEOUT_S = 0.3


def test_after_an_unanswered_request_the_next_waits_one_more_request_life(make_mock, store, redis_client, source_name):
    mock = make_mock(backlog=5, latency_ms=1500)  # every answer comes after the client gave up
    source = source_config(source_name, mock.url, timeout_s=TIMEOUT_S, max_attempts=2)
    stats = drain(source, store=store, redis_client=redis_client, options=DrainOptions(backoff_base_s=0.0))
    assert stats.status == DrainStatus.SOURCE_ERROR, stats.summary()

    first, second = mock.stats(include_arrivals=True)["arrivals"]
    # The first was sent at about `first`; it timed out TIMEOUT_S later; the next slot opened a
    # timeout + interval after that (with only the interval, this gap would be ~0.5 s).
    assert second - first >= TIMEOUT_S + TIMEOUT_S + source.min_interval_s - 0.02, second - first


def test_a_reset_after_the_request_was_written_waits_as_long_as_a_timeout(make_mock, store, redis_client, source_name):
    """A reset (or a broken response) after the request was written is no more proof than a timeout: the
    request may still sit in the source's backlog. The next one waits timeout + interval too."""
    mock = make_mock(backlog=5)
    mock.control({"next": [{"kind": "reset"}]})
    source = source_config(source_name, mock.url, timeout_s=TIMEOUT_S, max_attempts=3)
    stats = drain(source, store=store, redis_client=redis_client, options=DrainOptions(backoff_base_s=0.0))
    assert stats.status == DrainStatus.CAUGHT_UP and stats.errors == 1, stats.summary()
    assert "connection error" in stats.last_error, stats.last_error

    first, second = mock.stats(include_arrivals=True)["arrivals"][:2]
    assert second - first >= TIMEOUT_S + source.min_interval_s - 0.02, second - first
