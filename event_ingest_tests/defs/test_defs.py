"""The Dagster layer: definitions load, a partition materializes, checks judge, sensors wait their turn."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from event_ingest.config import SourceConfig
from event_ingest.core import Store
from event_ingest.defs import build_definitions
from event_ingest.defs.resources import IngestResource

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sources(make_mock):
    names = [f"d_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    mocks = [make_mock(backlog=1200, error_rate=0.1, random_seed=i) for i in range(2)]
    return [SourceConfig(name=n, url=m.url, page_size=500, timeout_s=1.0, max_run_seconds=30) for n, m in
            zip(names, mocks)]


@pytest.fixture
def defs(sources, database_url, redis_url):
    return build_definitions(sources, IngestResource(database_url=database_url, redis_url=redis_url))


def run_partition(defs, partition):
    job = defs.resolve_job_def("ingest")
    return job.execute_in_process(partition_key=partition, instance=dg.DagsterInstance.ephemeral(),
                                  raise_on_error=False)


def check_results(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_definitions_are_loadable(defs, sources):
    dg.Definitions.validate_loadable(defs)
    assert {s.name for s in defs.sensors} == {f"ingest_{s.name}" for s in sources} | {
        "alert_on_run_failure", "alert_on_check_failure"}
    events = defs.resolve_assets_def("events")
    assert set(events.partitions_def.get_partition_keys()) == {s.name for s in sources}


def test_dagster_cli_validates_the_workspace(tmp_path):
    sources_file = tmp_path / "sources.yaml"
    sources_file.write_text("sources:\n  - {name: source1, url: 'http://127.0.0.1:3001/events'}\n")
    env = {**os.environ, "EVENT_INGEST_SOURCES": str(sources_file), "DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).parent / "dagster"
    done = subprocess.run([str(dagster), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr


def test_materializing_a_partition_drains_its_source_and_reports(defs, sources, database_url):
    source = sources[0]
    result = run_partition(defs, source.name)
    assert result.success
    materializations = result.asset_materializations_for_node("events")
    assert len(materializations) == 1
    metadata = materializations[0].metadata
    assert metadata["events"].value == 1200
    assert metadata["cursor"].value == 1200
    assert metadata["requests"].value >= 3
    assert metadata["min_gap_ms"].value >= 200
    assert check_results(result) == {"no_gaps": True, "cursor_matches_max_id": True, "quarantine_empty": True}
    assert result.asset_materializations_for_node("events_per_minute")[0].metadata["events_last_hour"].value == 1200
    with Store(database_url) as store:
        assert store.event_ids(source.name) == list(range(1, 1201))
        assert store.event_ids(sources[1].name) == []  # one partition, one source
        rolled = store.conn.execute("SELECT sum(events) FROM events_per_minute WHERE source = %s",
                                    (source.name,)).fetchone()[0]
        assert rolled == 1200  # the rollup's rows are in Postgres, not only in the metadata


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
    assert checks == {"no_gaps": False, "cursor_matches_max_id": False, "quarantine_empty": False}
    gap = next(e for e in result.get_asset_check_evaluations() if e.check_name == "no_gaps")
    assert gap.metadata["missing_ids"].value == 11
    assert gap.metadata["first_gaps"].value == "500-510"
    quarantine = next(e for e in result.get_asset_check_evaluations() if e.check_name == "quarantine_empty")
    assert quarantine.severity == dg.AssetCheckSeverity.WARN


def test_a_failing_source_fails_the_run_with_the_reason(make_mock, database_url, redis_url):
    mock = make_mock(backlog=10)
    mock.control({"next": [{"kind": "status", "status": 404, "body": "no such stream"}]})
    source = SourceConfig(name=f"d_{uuid.uuid4().hex[:10]}", url=mock.url, timeout_s=1.0)
    defs = build_definitions([source], IngestResource(database_url=database_url, redis_url=redis_url))
    result = run_partition(defs, source.name)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "HTTP 404" in failure.step_failure_data.error.message


def test_a_sensor_requests_a_run_only_when_none_is_active(defs, sources):
    source = sources[0]
    sensor = next(s for s in defs.sensors if s.name == f"ingest_{source.name}")
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        assert [r.partition_key for r in first.run_requests] == [source.name]
        job = defs.resolve_job_def("ingest")
        run = instance.create_run_for_job(job, tags={"dagster/partition": source.name})  # NOT_STARTED: active
        busy = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        assert not busy.run_requests and "NOT_STARTED" in busy.skip_message
        other = next(s for s in defs.sensors if s.name == f"ingest_{sources[1].name}")
        assert other.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs)).run_requests
        instance.report_run_failed(run)
        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        assert [r.partition_key for r in again.run_requests] == [source.name]
