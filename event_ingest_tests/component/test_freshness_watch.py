"""The freshness watch: `fresh` turns red for a late source with no run hosting it (freshness.py).

No `ingest` run exists in these tests: the watch is ticked as the daemon would, and the run it asks
for is executed as the run launcher would, on a Postgres-backed instance. Ages are set in Postgres
(the clock the check reads), never waited for.
"""

from __future__ import annotations

import json

import dagster as dg

from event_ingest.component import IngestResource, build_definitions
from event_ingest.component.freshness import REQUESTS_PER_TICK, find_late
from event_ingest_tests.conftest import source_config

MAX_LAG_S = 60.0


def set_last_poll(store, source: str, seconds_ago: float) -> None:
    store.ensure_source(source)
    with store.conn.transaction():
        store.conn.execute(
            "UPDATE source_state SET last_poll_at = now() - make_interval(secs => %s), "
            "last_ingest_at = now() - make_interval(secs => %s) WHERE source = %s",
            (seconds_ago, seconds_ago, source),
        )


def tick(defs, instance, resource, cursor=None):
    watch = defs.resolve_sensor_def("freshness_watch")
    context = dg.build_sensor_context(
        instance=instance, definitions=defs, resources={"event_ingest": resource}, cursor=cursor
    )
    return watch.evaluate_tick(context)


def test_a_late_source_no_run_hosts_turns_fresh_red_and_one_run_per_episode(
    make_mock, store, database_url, redis_url, source_name, dagster_instance
):
    on_time, late = f"{source_name}_a", f"{source_name}_b"
    url = make_mock(backlog=0).url
    sources = [source_config(name, url, max_lag_s=MAX_LAG_S) for name in (on_time, late)]
    resource = IngestResource(database_url=database_url, redis_url=redis_url)
    defs = build_definitions(sources, resource)
    set_last_poll(store, on_time, 5)
    set_last_poll(store, late, MAX_LAG_S + 30)

    first = tick(defs, dagster_instance, resource)
    [request] = first.run_requests
    assert request.partition_key == late
    assert [key.name for key in request.asset_check_keys] == ["fresh"]

    # The run the daemon would launch: the check alone, on that partition; it records the failure.
    assert request.asset_selection == []  # the check alone: nothing is materialized
    job = defs.resolve_job_def("freshness").get_subset(
        asset_selection=set(request.asset_selection), asset_check_selection=set(request.asset_check_keys)
    )
    result = job.execute_in_process(instance=dagster_instance, partition_key=late)
    assert result.get_asset_materialization_events() == []  # nothing materialized
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == "fresh" and not evaluation.passed
    assert "limit 60 s" in (evaluation.description or "")

    # Still late, same episode: nothing more is asked for.
    again = tick(defs, dagster_instance, resource, cursor=first.cursor)
    assert not again.run_requests, again.skip_message
    # Polled, then late again: a new episode, a new request.
    set_last_poll(store, late, MAX_LAG_S + 5)
    later = tick(defs, dagster_instance, resource, cursor=again.cursor)
    assert [r.partition_key for r in later.run_requests] == [late]
    assert later.run_requests[0].run_key != request.run_key


def test_a_source_never_polled_is_late_once_the_watch_saw_it_unpolled_for_its_max_lag():
    source = source_config("never_polled", "http://127.0.0.1:9/", max_lag_s=MAX_LAG_S)
    late, seen = find_late([source], {}, {}, now=1000.0)
    assert late == [] and seen == {"never_polled": 1000.0}
    late, seen = find_late([source], {}, seen, now=1000.0 + MAX_LAG_S + 1)
    assert [item.source for item in late] == ["never_polled"] and late[0].run_key == "late:never_polled:never"
    # Polled since: the memory of it goes.
    late, seen = find_late([source], {"never_polled": (1.0, 5000.0)}, seen, now=5001.0)
    assert late == [] and seen == {}


def test_when_everything_is_late_the_watch_asks_a_few_per_tick_and_reaches_them_all(
    make_mock, store, database_url, redis_url, source_name, dagster_instance
):
    names = [f"{source_name}_{i:02d}" for i in range(REQUESTS_PER_TICK + 3)]
    url = make_mock(backlog=0).url
    resource = IngestResource(database_url=database_url, redis_url=redis_url)
    defs = build_definitions([source_config(n, url, max_lag_s=MAX_LAG_S) for n in names], resource)
    for i, name in enumerate(names):
        set_last_poll(store, name, MAX_LAG_S + 100 + i)
    first = tick(defs, dagster_instance, resource)
    assert len(first.run_requests) == REQUESTS_PER_TICK
    assert first.run_requests[0].partition_key == names[-1]  # the most late first
    second = tick(defs, dagster_instance, resource, cursor=first.cursor)
    asked = {r.partition_key for r in first.run_requests} | {r.partition_key for r in second.run_requests}
    assert asked == set(names) and len(second.run_requests) == 3
    assert set(json.loads(second.cursor)["asked"]) == set(names)
