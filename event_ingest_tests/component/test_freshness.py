"""The `fresh` check: red when a source has not been polled successfully within its max_lag_s.

A source that answers only errors never gets a successful poll recorded, so its check turns red once
max_lag_s has passed, and green again after the next good poll. Judged on Postgres' clock (the age the
check reads), never by sleeping a fixed time.
"""

from __future__ import annotations

import time

from event_ingest.component.checks import fresh
from event_ingest.core import DrainOptions, drain
from event_ingest_tests.conftest import source_config

MAX_LAG_S = 1.0


def wait_for_age_over(store, source: str, seconds: float, timeout_s: float = 60.0) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        age = store.poll_age_s(source)
        store.conn.rollback()
        if age is not None and age > seconds:
            return age
        assert time.monotonic() < deadline, f"poll age still {age} after {timeout_s} s"
        time.sleep(0.1)


def test_a_failing_source_turns_fresh_red_and_a_recovered_one_green(make_mock, store, redis_client, source_name):
    mock = make_mock(backlog=10)
    source = source_config(source_name, mock.url, timeout_s=1.0, max_attempts=2, max_lag_s=MAX_LAG_S)
    options = DrainOptions(backoff_base_s=0.01)

    assert drain(source, store=store, redis_client=redis_client, options=options).status == "caught_up"
    assert fresh(store, source).passed

    mock.control({"error_rate": 1.0})
    failing = drain(source, store=store, redis_client=redis_client, options=options)
    assert failing.status == "source_error", failing.summary()
    wait_for_age_over(store, source_name, MAX_LAG_S)
    # Another failing drain after the limit: errors do not count as polls.
    drain(source, store=store, redis_client=redis_client, options=options)
    red = fresh(store, source)
    assert not red.passed
    assert "failing, paused or not hosted" in red.description
    assert red.metadata["last_poll_age_s"].value > MAX_LAG_S

    mock.control({"error_rate": 0.0})
    assert drain(source, store=store, redis_client=redis_client, options=options).status == "caught_up"
    assert fresh(store, source).passed


def test_a_source_never_polled_is_not_fresh(store, source_name):
    store.apply_schema([source_name])
    result = fresh(store, source_config(source_name, "http://127.0.0.1:9/events"))
    assert not result.passed
    assert result.metadata["note"].value == "never polled successfully"
