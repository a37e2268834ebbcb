"""The Dagster layer: definitions load, a partition materializes, checks judge, sensors keep sources hosted."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from event_ingest.component import build_definitions
from event_ingest.component.ingest_job import SLOT_TAG
from event_ingest.component.resources import IngestResource
from event_ingest.component.sensors import SLOT_CLAIM_PREFIX, RunView, decide
from event_ingest.config import IngestConfig, RunSettings, SourceConfig
from event_ingest.core import Store
from event_ingest.core.worker import Heartbeat

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def mocks(make_mock):
    """The mock sources behind ``sources``: their recorders say what each source saw."""
    return [make_mock(backlog=1200, error_rate=0.1, random_seed=i) for i in range(2)]


@pytest.fixture
def sources(mocks):
    names = [f"d_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    return [
        SourceConfig(name=n, url=m.url, page_size=500, timeout_s=1.0, max_run_seconds=30) for n, m in zip(names, mocks)
    ]


@pytest.fixture
def defs(sources, database_url, redis_url):
    return build_definitions(sources, IngestResource(database_url=database_url, redis_url=redis_url))


def run_partition(defs, partition):
    job = defs.resolve_job_def("drain")
    return job.execute_in_process(
        partition_key=partition, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def check_results(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_definitions_are_loadable(defs, sources):
    dg.Definitions.validate_loadable(defs)
    assert {s.name for s in defs.sensors} == {f"ingest_{s.name}" for s in sources} | {
        "alert_on_run_failure",
        "alert_on_run_recovery",
        "alert_on_check_failure",
        "freshness_watch",
    }
    assert {j.name for j in defs.jobs} == {"ingest", "drain", "replay", "rollup", "freshness"}  # no retention
    events = defs.resolve_assets_def("events")
    assert set(events.partitions_def.get_partition_keys()) == {s.name for s in sources}


def test_the_source_sensors_tick_at_the_configured_interval(sources):
    def intervals(config: IngestConfig) -> set[int | None]:
        built = build_definitions(config)
        return {s.minimum_interval_seconds for s in built.sensors if s.name.startswith("ingest_")}

    assert intervals(IngestConfig(sources=sources)) == {10}
    assert intervals(IngestConfig(sources=sources, runs=RunSettings(sensor_interval_s=30))) == {30}


def test_dagster_cli_validates_the_workspace(tmp_path):
    sources_file = tmp_path / "sources.yaml"
    sources_file.write_text("sources:\n  - {name: source1, url: 'http://127.0.0.1:3001/events'}\n")
    env = {**os.environ, "EVENT_INGEST_SOURCES": str(sources_file), "DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).parent / "dagster"
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dg_lists_and_checks_the_definitions(tmp_path):
    """The project is a `dg` project ([tool.dg] in pyproject.toml): list, check (and launch) work from it."""
    sources_file = tmp_path / "sources.yaml"
    sources_file.write_text("sources:\n  - {name: source1, url: 'http://127.0.0.1:3001/events'}\n")
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "EVENT_INGEST_SOURCES": str(sources_file), "DAGSTER_HOME": str(tmp_path)}
    dg = Path(sys.executable).parent / "dg"
    checked = subprocess.run([str(dg), "check", "defs"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = subprocess.run(
        [str(dg), "list", "defs", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout
    for name in ("events", "ingest", "drain", "ingest_source1", "no_gaps", "fresh"):
        assert name in text


def test_materializing_a_partition_drains_its_source_and_reports(defs, sources, mocks, database_url):
    source = sources[0]
    result = run_partition(defs, source.name)
    assert result.success
    materializations = result.asset_materializations_for_node("events")
    assert len(materializations) == 1
    metadata = materializations[0].metadata
    assert metadata["events"].value == 1200
    assert metadata["cursor"].value == 1200
    # Spacing judged at the source, on its recorder's arrival times; the metadata reports what it saw.
    seen = mocks[0].stats()
    assert seen["gaps_under_200ms"] == 0 and seen["min_gap_ms"] >= 200
    assert metadata["requests"].value == seen["requests"] >= 3
    assert "min_gap_ms" in metadata
    assert mocks[1].stats()["requests"] == 0  # one partition, one source
    assert check_results(result) == {
        "no_gaps": True,
        "cursor_matches_max_id": True,
        "quarantine_empty": True,
        "fresh": True,
        "not_stuck": True,
    }
    assert metadata["dagster/row_count"].value == 1200
    with Store(database_url) as store:
        assert store.event_ids(source.name) == list(range(1, 1201))
        assert store.event_ids(sources[1].name) == []  # one partition, one source

    rollup = defs.resolve_job_def("rollup").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    metadata = rollup.asset_materializations_for_node("events_per_minute")[0].metadata
    assert metadata["events_last_hour"].value == 1200  # read from the per-minute counts in Postgres
    assert (
        f"| {source.name} | 1200 |" in metadata["per_source"].value
        and f"| {sources[1].name} | 0 |" in metadata["per_source"].value
    )
    assert metadata["counter_drift_sources"].value == "none" and metadata["counter_audit_blocks"].value >= 1


def test_the_scheduled_rollup_finds_counter_drift_a_write_past_the_triggers_left(defs, sources, database_url):
    source = sources[0]
    assert run_partition(defs, source.name).success
    with Store(database_url) as store:
        store.conn.execute("SET session_replication_role = replica")  # the counting triggers do not see this
        store.conn.execute("DELETE FROM events WHERE source = %s AND event_id = 700", (source.name,))
        store.conn.execute("RESET session_replication_role")
        store.conn.commit()
    assert check_results(run_partition(defs, source.name))["no_gaps"]  # the gap hides behind the counters
    rollup = defs.resolve_job_def("rollup").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    metadata = rollup.asset_materializations_for_node("events_per_minute")[0].metadata
    assert metadata["counter_drift_sources"].value == source.name
    after = run_partition(defs, source.name)
    gap = next(e for e in after.get_asset_check_evaluations() if e.check_name == "no_gaps")
    assert not gap.passed and f"event-ingest recount {source.name}" in (gap.description or "")


def test_checks_fail_on_a_planted_gap(defs, sources, database_url):
    source = sources[1]
    assert run_partition(defs, source.name).success
    with Store(database_url) as store:
        store.conn.execute("DELETE FROM events WHERE source = %s AND event_id BETWEEN 500 AND 510", (source.name,))
        store.conn.execute("UPDATE source_state SET cursor = 1300 WHERE source = %s", (source.name,))
        store.conn.execute(
            "INSERT INTO quarantine (source, raw, reason, digest) VALUES (%s, 'x', 'planted', 'd')", (source.name,)
        )
        store.conn.commit()
    result = run_partition(defs, source.name)
    checks = check_results(result)
    assert checks == {
        "no_gaps": False,
        "cursor_matches_max_id": False,
        "quarantine_empty": False,
        "fresh": True,
        "not_stuck": True,
    }
    gap = next(e for e in result.get_asset_check_evaluations() if e.check_name == "no_gaps")
    assert gap.metadata["missing_ids"].value == 11
    assert gap.metadata["first_gaps"].value == "500-510"
    quarantine = next(e for e in result.get_asset_check_evaluations() if e.check_name == "quarantine_empty")
    assert quarantine.severity == dg.AssetCheckSeverity.WARN


def test_no_gaps_counts_every_missing_id_and_says_the_list_is_cut(make_mock, store, redis_client):
    """137 ranges missing: the metadata counts all of them and every missing id; the ranges named are the
    first 20, and the text says so."""
    from event_ingest.component.checks import no_gaps
    from event_ingest.core import drain

    served = range(1, 276, 2)  # 2, 4, ..., 274 missing: 137 ranges of one id
    mock = make_mock(backlog=0)
    mock.control({"next": [{"kind": "events", "events": [{"id": i, "payload": i} for i in served], "record": True}]})
    source = SourceConfig(name=f"d_{uuid.uuid4().hex[:10]}", url=mock.url, timeout_s=1.0)
    drain(source, store=store, redis_client=redis_client)
    result = no_gaps(store, source)
    assert not result.passed
    assert (result.metadata["missing_ids"].value, result.metadata["gap_ranges"].value) == (137, 137)
    assert result.metadata["first_gaps"].value.startswith("first 20 of 137: 2-2, 4-4, ")
    assert result.metadata["first_gaps"].value.endswith(", 40-40")
    assert result.description.startswith("137 ids missing in 137 ranges")


def test_a_failing_source_fails_the_run_with_the_reason(make_mock, database_url, redis_url):
    mock = make_mock(backlog=10)
    mock.control({"next": [{"kind": "status", "status": 404, "body": "no such stream"}]})
    source = SourceConfig(name=f"d_{uuid.uuid4().hex[:10]}", url=mock.url, timeout_s=1.0)
    defs = build_definitions([source], IngestResource(database_url=database_url, redis_url=redis_url))
    result = run_partition(defs, source.name)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "HTTP 404" in failure.step_failure_data.error.message


def test_a_sensor_asks_for_a_run_for_its_slot_only_when_nothing_hosts_its_source(
    sources, database_url, redis_url, redis_client, monkeypatch
):
    config = IngestConfig(sources=sources, runs=RunSettings(sources_per_run=1))
    defs = build_definitions(config, IngestResource(database_url=database_url, redis_url=redis_url))
    first, second = sources
    sensor = next(s for s in defs.sensors if s.name == f"ingest_{second.name}")
    resources = {"event_ingest": IngestResource(database_url=database_url, redis_url=redis_url)}

    def context(instance):
        return dg.build_sensor_context(instance=instance, definitions=defs, resources=resources)

    with dg.instance_for_test() as instance:
        tick = sensor.evaluate_tick(context(instance))
        [request] = tick.run_requests
        assert request.tags[SLOT_TAG] == "1"  # one source per run: the second source is slot 1
        assert request.run_config == {"ops": {"host_sources": {"config": {"slot": 1}}}}
        job = defs.resolve_job_def("ingest")
        run = instance.create_run_for_job(job, run_config=request.run_config, tags=request.tags)  # NOT_STARTED
        busy = sensor.evaluate_tick(context(instance))
        assert not busy.run_requests and "NOT_STARTED" in busy.skip_message
        # The run's heartbeat says it hosts the source: still nothing to ask for.
        beat = Heartbeat(run.run_id, started=1.0, retiring=False, hosting=[second.name], members=[second.name])
        redis_client.set(f"event-ingest:worker:{run.run_id}", beat.to_json(), px=30_000)
        instance.handle_run_event(run.run_id, dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, "ingest"))
        hosted = sensor.evaluate_tick(context(instance))
        assert not hosted.run_requests and "hosted by run" in hosted.skip_message
        # The next tick starts from the run the cursor names: Redis answers, Dagster's run storage is not
        # asked (an instance that knows no run at all would otherwise make it ask for one).
        assert hosted.cursor == run.run_id
        with dg.instance_for_test() as empty:
            fast = sensor.evaluate_tick(
                dg.build_sensor_context(instance=empty, definitions=defs, resources=resources, cursor=hosted.cursor)
            )
        assert not fast.run_requests and "hosted by run" in fast.skip_message
        # As the daemon ticks it (through the code server: the instance as a ref, opened only on demand), such a
        # tick opens no Dagster instance: `context.resources` would open one from the ref every tick (its
        # storages' engines and schema checks: most of Dagster's Postgres sessions at 50 sources).
        opened: list = []
        from_ref, ephemeral = dg.DagsterInstance.from_ref, dg.DagsterInstance.ephemeral
        monkeypatch.setattr(
            dg.DagsterInstance, "from_ref", staticmethod(lambda ref: opened.append(ref) or from_ref(ref))
        )
        monkeypatch.setattr(
            dg.DagsterInstance,
            "ephemeral",
            staticmethod(lambda *a, **k: opened.append("ephemeral") or ephemeral(*a, **k)),
        )
        repository = defs.get_repository_def()
        for _ in range(3):
            as_daemon = dg.SensorEvaluationContext(  # as the code server builds it: the declared resources only
                instance_ref=instance.get_ref(),
                cursor=hosted.cursor,
                repository_def=repository,
                sensor_name=sensor.name,
                resources={
                    key: value
                    for key, value in repository.get_top_level_resources().items()
                    if key in sensor.required_resource_keys
                },
            )
            with as_daemon:
                daemon_tick = sensor.evaluate_tick(as_daemon)
            assert "hosted by run" in daemon_tick.skip_message
        # The resource is built once (an ephemeral instance, the first time), never an instance per tick.
        assert opened in ([], ["ephemeral"]), f"the ticks opened Dagster instances: {opened}"
        monkeypatch.undo()
        # Retiring: the sensor asks for the successor.
        retiring = Heartbeat(run.run_id, 1.0, True, [second.name], [second.name])
        redis_client.set(f"event-ingest:worker:{run.run_id}", retiring.to_json(), px=30_000)
        redis_client.delete(SLOT_CLAIM_PREFIX + "ingest/1")  # the first tick's claim lapsed long before a retirement
        successor = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, definitions=defs, resources=resources, cursor=hosted.cursor)
        )
        assert [r.tags[SLOT_TAG] for r in successor.run_requests] == ["1"]  # a retiring cursor run: asked anew
        redis_client.delete(f"event-ingest:worker:{run.run_id}")


def test_the_sensor_decision_waits_for_starting_runs_and_replaces_dead_ones():
    started = dg.DagsterRunStatus.STARTED
    live = Heartbeat("a", 1.0, False, ["s1"], ["s1", "s2"])
    # Hosted, or about to be (its slot's live run takes it up on its next look).
    assert decide("s1", 0, [RunView("a", 0, started, 30.0)], {"a": live}) == (False, "hosted by run a")
    assert not decide("s2", 0, [RunView("a", 0, started, 30.0)], {"a": live})[0]
    # A run of the slot on its way (queued, or started without a heartbeat yet): wait.
    assert not decide("s3", 1, [RunView("b", 1, dg.DagsterRunStatus.QUEUED, None)], {})[0]
    assert not decide("s3", 1, [RunView("b", 1, started, 20.0)], {})[0]
    # Started long ago and silent: dead. A run of another slot does not count.
    assert decide("s3", 1, [RunView("b", 1, started, 1000.0)], {})[0]
    assert decide("s3", 1, [RunView("c", 0, dg.DagsterRunStatus.QUEUED, None)], {})[0]
    # Hosted by a retiring run only: ask for its successor.
    retiring = Heartbeat("a", 1.0, True, ["s1"], ["s1"])
    ask, why = decide("s1", 0, [RunView("a", 0, started, 30.0)], {"a": retiring})
    assert ask and "retiring" in why
