"""Which sources an `ingest` run hosts: those whose sensor ticks (hosting.py). A real `ingest` run, in this
process, on a Postgres-backed instance, against mock sources; the sensors evaluated as the daemon would."""

from __future__ import annotations

import logging
import threading
import time

import dagster as dg
import pytest

from event_ingest.component import IngestResource, build_definitions
from event_ingest.component.hosting import WANTED_PREFIX, WANTED_TTL_S, wanted
from event_ingest.component.ingest_job import NOT_WANTED, RUN_SLOT_TAG, SLOT_TAG
from event_ingest.component.sensors import SLOT_CLAIM_PREFIX
from event_ingest.config import IngestConfig, RunSettings
from event_ingest.core.lease import KEY_PREFIX as LEASE_PREFIX
from event_ingest_tests.conftest import source_config

WAIT_S = 120  # only a hung test waits this long


def wait_until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_sensor_tick_marks_its_source_wanted_for_a_few_ticks(
    make_mock, database_url, redis_url, redis_client, source_name, dagster_instance
):
    source = source_config(source_name, make_mock(backlog=0).url)
    resource = IngestResource(database_url=database_url, redis_url=redis_url)
    defs = build_definitions([source], resource)
    assert wanted(redis_client, [source_name]) == set()
    sensor = defs.resolve_sensor_def(f"ingest_{source_name}")
    tick = sensor.evaluate_tick(
        dg.build_sensor_context(instance=dagster_instance, definitions=defs, resources={"event_ingest": resource})
    )
    [request] = tick.run_requests
    assert request.tags[SLOT_TAG] == "0" and request.tags[RUN_SLOT_TAG] == "ingest/0"
    assert wanted(redis_client, [source_name]) == {source_name}
    assert redis_client.get(WANTED_PREFIX + source_name) == f"ingest_{source_name}".encode()
    assert WANTED_TTL_S * 1000 - 5000 < redis_client.pttl(WANTED_PREFIX + source_name) <= WANTED_TTL_S * 1000
    redis_client.delete(WANTED_PREFIX + source_name)


def test_the_sensors_of_one_slot_ask_for_one_run_between_them(
    make_mock, database_url, redis_url, redis_client, source_name, dagster_instance
):
    """At the start (and at each handoff) every sensor of a slot ticks before any run it asks for is in
    Dagster's storage: one asks, the others see its claim and skip. A claim whose run never came lapses."""
    url = make_mock(backlog=0).url
    names = [f"{source_name}_{i}" for i in range(3)]
    resource = IngestResource(database_url=database_url, redis_url=redis_url)
    defs = build_definitions(IngestConfig(sources=[source_config(n, url) for n in names]), resource)

    def tick(name):
        return defs.resolve_sensor_def(f"ingest_{name}").evaluate_tick(
            dg.build_sensor_context(instance=dagster_instance, definitions=defs, resources={"event_ingest": resource})
        )

    try:
        ticks = [tick(n) for n in names]  # nothing is launched: as if the daemon evaluated them at once
        assert [len(t.run_requests) for t in ticks] == [1, 0, 0]
        assert all(f"sensor ingest_{names[0]} asked for slot 0" in t.skip_message for t in ticks[1:])
        redis_client.delete(SLOT_CLAIM_PREFIX + "ingest/0")  # the claim lapsed and no run ever came
        assert len(tick(names[2]).run_requests) == 1
    finally:
        redis_client.delete(SLOT_CLAIM_PREFIX + "ingest/0", *[WANTED_PREFIX + n for n in names])


@pytest.mark.slow
def test_a_run_hosts_what_its_sensors_keep_wanted_and_lets_go_of_a_source_whose_sensor_stops(
    make_mock, database_url, redis_url, redis_client, store, dagster_instance, source_name
):
    """Source `paused` (its sensor stopped before the run began) is never asked for anything; source `live` is
    drained while its sensor ticks and let go, with `fresh` failing "not wanted", once its mark is gone (as it
    is WANTED_TTL_S after the sensor stops: deleted here rather than waited for). The run's log warns of a
    source that looks renamed before the first request."""
    live_mock, paused_mock = make_mock(backlog=300), make_mock(backlog=300)
    live, paused, old = f"{source_name}_l", f"{source_name}_p", f"{source_name}_o"
    store.apply_schema([old])  # a source with state that nothing configures any more: `live` may be its new name
    config = IngestConfig(
        sources=[source_config(live, live_mock.url), source_config(paused, paused_mock.url)],
        runs=RunSettings(sources_per_run=2, run_seconds=60, handoff_s=5, report_every_s=1, idle_exit_s=5),
    )
    resource = IngestResource(database_url=database_url, redis_url=redis_url)
    defs = build_definitions(config, resource)
    sensor_daemon_beats(dagster_instance)  # the daemon is alive: a lapsed mark means a stopped sensor
    sensor = defs.resolve_sensor_def(f"ingest_{live}")
    tick = sensor.evaluate_tick(
        dg.build_sensor_context(instance=dagster_instance, definitions=defs, resources={"event_ingest": resource})
    )
    [request] = tick.run_requests  # `paused`'s sensor never ticks: stopped

    results = []
    runner = threading.Thread(
        target=lambda: results.append(
            defs.resolve_job_def("ingest").execute_in_process(
                run_config=request.run_config, tags=request.tags, instance=dagster_instance, raise_on_error=False
            )
        ),
        daemon=True,
    )
    runner.start()
    try:
        wait_until(lambda: len(store.event_ids(live)) == 300, "the live source to be drained")
        # Its sensor stops: the mark lapses, the run lets go between two requests.
        redis_client.delete(WANTED_PREFIX + live)
        wait_until(lambda: redis_client.get(f"{LEASE_PREFIX}{live}") is None, "the run to let go of the live source")
        settled = live_mock.stats()["requests"]
        time.sleep(3)
        assert live_mock.stats()["requests"] == settled  # nothing more asked of it
        runner.join(WAIT_S + 60)  # with nothing wanted the run ends by itself (idle)
        assert not runner.is_alive()
    finally:
        redis_client.delete(WANTED_PREFIX + live)
    [result] = results
    assert result.success
    assert paused_mock.stats()["requests"] == 0 and store.event_ids(paused) == []
    for name in (live, paused):  # `fresh` says why, hosted or not
        fresh = [e for e in result.get_asset_check_evaluations() if e.check_name == "fresh" and e.partition == name]
        assert fresh and not fresh[-1].passed and fresh[-1].description == NOT_WANTED
    logs = [r.user_message for r in dagster_instance.all_logs(result.run_id)]
    assert any("possible rename" in m and repr(old) in m and repr(live) in m for m in logs)
    logging.getLogger(__name__).info("run %s ended", result.run_id)


def sensor_daemon_beats(instance, at: float | None = None) -> None:
    """What the sensor daemon writes every 30 s while it runs."""
    from dagster._daemon.types import DaemonHeartbeat  # a test stands in for the daemon; the product reads it

    instance.add_daemon_heartbeat(DaemonHeartbeat(at or time.time(), "SENSOR", None, None))


def test_marks_that_lapse_while_the_sensor_daemon_is_down_do_not_stop_ingestion(
    make_mock, database_url, redis_url, redis_client, store, dagster_instance, source_name
):
    """The daemon down (its last beat minutes old): every mark lapses, and the run keeps draining its source
    regardless. Once the daemon beats again, the lapsed mark is believed and the run lets go."""
    mock = make_mock(backlog=100, rate=20)
    config = IngestConfig(
        sources=[source_config(source_name, mock.url)],
        runs=RunSettings(sources_per_run=1, run_seconds=60, handoff_s=5, report_every_s=1, idle_exit_s=5),
    )
    resource = IngestResource(database_url=database_url, redis_url=redis_url)
    defs = build_definitions(config, resource)
    sensor_daemon_beats(dagster_instance)
    tick = defs.resolve_sensor_def(f"ingest_{source_name}").evaluate_tick(
        dg.build_sensor_context(instance=dagster_instance, definitions=defs, resources={"event_ingest": resource})
    )
    [request] = tick.run_requests
    sensor_daemon_beats(dagster_instance, at=time.time() - 600)  # ... and then the daemon went away
    redis_client.delete(WANTED_PREFIX + source_name)  # its mark lapsed with it
    results = []
    runner = threading.Thread(
        target=lambda: results.append(
            defs.resolve_job_def("ingest").execute_in_process(
                run_config=request.run_config, tags=request.tags, instance=dagster_instance, raise_on_error=False
            )
        ),
        daemon=True,
    )
    runner.start()
    try:
        wait_until(lambda: len(store.event_ids(source_name)) >= 100, "the source to be drained, daemon down")
        served = mock.stats()["requests"]
        wait_until(lambda: mock.stats()["requests"] > served + 5, "the run to keep polling through the outage")
        sensor_daemon_beats(dagster_instance)  # the daemon is back, and the source's sensor does not tick
        wait_until(lambda: redis_client.get(f"{LEASE_PREFIX}{source_name}") is None, "the run to let go")
        runner.join(WAIT_S + 60)
        assert not runner.is_alive()
    finally:
        redis_client.delete(WANTED_PREFIX + source_name)
    [result] = results
    assert result.success
