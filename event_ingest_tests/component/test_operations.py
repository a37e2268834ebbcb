"""Operating it from Dagster, on a real (Postgres-backed) instance: the replay job, a backfill of the drain
job while a live host holds one source, sources added and removed by editing the sources file, renames
warned about, and the not_stuck check."""

from __future__ import annotations

import base64
import logging
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from event_ingest.component import build_definitions
from event_ingest.component.checks import not_stuck
from event_ingest.component.ingest_job import SLOT_TAG
from event_ingest.component.renames import warn_of_renames
from event_ingest.component.resources import IngestResource
from event_ingest.config import load_config
from event_ingest.core import Store, drain
from event_ingest.core.host import SourceHost
from event_ingest_tests.conftest import source_config

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 120  # only a hung test waits this long


def wait_until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def name() -> str:
    return f"o_{uuid.uuid4().hex[:10]}"


def sources_text(entries: list[tuple[str, str]], extra: str = "") -> str:
    return "sources:\n" + "".join(f"  - name: {n}\n    url: {u}\n    timeout_s: 1\n{extra}" for n, u in entries)


def step_failure(result) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.user_failure_data.description


def test_the_replay_job_rewinds_through_the_fence_from_run_config(
    make_mock, database_url, redis_url, redis_client, store, dagster_instance
):
    mock = make_mock(backlog=40)
    source = source_config(name(), mock.url)
    drain(source, store=store, redis_client=redis_client)
    defs = build_definitions([source], IngestResource(database_url=database_url, redis_url=redis_url))
    job = defs.resolve_job_def("replay")
    epoch = store.source_status(source.name).epoch

    def launch(config: dict):
        return job.execute_in_process(
            instance=dagster_instance, raise_on_error=False, run_config={"ops": {"rewind_cursor": {"config": config}}}
        )

    result = launch({"source": source.name, "from_id": 25, "delete_from": 31})
    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = output.event_specific_data.metadata
    assert (
        metadata["cursor_before"].value,
        metadata["cursor_after"].value,
        metadata["deleted"].value,
        metadata["epoch"].value,
    ) == (40, 25, 10, epoch + 1)
    status = store.source_status(source.name)
    assert (status.cursor, status.epoch, status.events) == (25, epoch + 1, 30)
    assert dagster_instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS

    # Nonsense fails the run with the reason and changes nothing.
    for config, message in [
        (
            {"source": source.name, "from_id": 26},
            f"refused: source '{source.name}': --from-id 26 is above the cursor 25",
        ),
        ({"source": source.name, "from_id": 5, "delete_from": 2}, "--delete-from 2 must be above --from-id 5"),
        ({"source": "nope", "from_id": 1}, f"source 'nope' is not configured (configured: {source.name})"),
    ]:
        failed = launch(config)
        assert not failed.success and message in step_failure(failed)
    status = store.source_status(source.name)
    assert (status.cursor, status.epoch, status.events) == (25, epoch + 1, 30)
    assert drain(source, store=store, redis_client=redis_client).cursor_after == 40
    assert store.event_ids(source.name) == list(range(1, 41))


@pytest.mark.slow
def test_a_backfill_of_the_drain_job_drains_its_partitions_and_leaves_a_hosted_source_to_its_host(
    tmp_path, monkeypatch, make_mock, database_url, redis_url, redis_client, store, dagster_storage_url
):
    """The backfill daemon's own iteration, against the code location loaded the way `dagster dev` loads it
    (workspace module, gRPC server), its runs launched in this process so they are judged here."""
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.storage.tags import BACKFILL_ID_TAG
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    mocks = {name(): make_mock(backlog=300) for _ in range(3)}
    hosted, *others = list(mocks)
    # The hosted source is polled once an hour when caught up: any later request to it is the backfill's.
    text = sources_text(
        [(n, m.url) for n, m in mocks.items()], extra="    idle_poll_ms: 3600000\n    max_lag_s: 3600\n"
    )
    (tmp_path / "sources.yaml").write_text(text)
    for variable, value in (
        ("EVENT_INGEST_SOURCES", str(tmp_path / "sources.yaml")),
        ("EVENT_INGEST_DATABASE_URL", database_url),
        ("EVENT_INGEST_REDIS_URL", redis_url),
    ):
        monkeypatch.setenv(variable, value)
    config = load_config(tmp_path / "sources.yaml")
    store.apply_schema(list(mocks))
    host_store = Store(database_url)
    host = SourceHost(config.source(hosted), store=host_store, redis_client=redis_client, lease_ttl_s=3).start()
    try:
        # One page of 300, then a poll that finds nothing new: the host is at the head, idle, holding the lease.
        wait_until(
            lambda: mocks[hosted].stats()["requests"] == 2 and host.state == "draining", "the host to reach the head"
        )
        requests_before = mocks[hosted].stats()["requests"]
        overrides = {
            "storage": {"postgres": {"postgres_url": dagster_storage_url}},
            "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
            "run_launcher": {
                "module": "dagster._core.launcher.sync_in_memory_run_launcher",
                "class": "SyncInMemoryRunLauncher",
            },
        }
        with (
            dg.instance_for_test(overrides=overrides) as instance,
            create_test_daemon_workspace_context(
                ModuleTarget("event_ingest.definitions", None, str(ROOT), "event_ingest"), instance
            ) as context,
        ):
            location = context.create_request_context().get_code_location("event_ingest")
            partition_set = location.get_repository("__repository__").get_partition_set("drain_partition_set")
            backfill_id = f"ops{uuid.uuid4().hex[:6]}"
            instance.add_backfill(
                PartitionBackfill(
                    backfill_id=backfill_id,
                    status=BulkActionStatus.REQUESTED,
                    from_failure=False,
                    tags={},
                    backfill_timestamp=time.time(),
                    partition_set_origin=partition_set.get_remote_origin(),
                    partition_names=list(mocks),
                )
            )

            def done() -> bool:
                list(execute_backfill_iteration(context, logging.getLogger("backfill")))
                return instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS

            wait_until(done, "the backfill to complete")
            runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
            assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(mocks)
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            metadata = {}
            for run in runs:
                [event] = [
                    r.event_log_entry.dagster_event
                    for r in instance.get_records_for_run(
                        run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
                    ).records
                    if r.event_log_entry.dagster_event.asset_key == dg.AssetKey("events")
                ]
                metadata[run.tags["dagster/partition"]] = event.event_specific_data.materialization.metadata
        assert (metadata[hosted]["status"].value, metadata[hosted]["requests"].value) == ("lease_busy", 0)
        assert mocks[hosted].stats()["requests"] == requests_before  # the backfill fetched nothing from it
        assert host.alive and host.state == "draining"  # and the host still holds it
        for other in others:
            assert (metadata[other]["status"].value, metadata[other]["events"].value) == ("caught_up", 300)
    finally:
        host.stop()
        assert host.join(WAIT_S)
        host_store.close()
    for source, mock in mocks.items():
        seen = mock.stats(include_ids=True)
        assert store.event_ids(source) == seen["served_ids"] == list(range(1, 301))
        assert seen["gaps_under_200ms"] == 0


def test_sources_come_and_go_by_editing_the_sources_file(
    tmp_path, monkeypatch, make_mock, database_url, redis_url, redis_client, store, dagster_instance
):
    from event_ingest.definitions import defs as load_definitions

    first, second = name(), name()
    mock = make_mock(backlog=10)
    file = tmp_path / "sources.yaml"
    for variable, value in (
        ("EVENT_INGEST_SOURCES", str(file)),
        ("EVENT_INGEST_DATABASE_URL", database_url),
        ("EVENT_INGEST_REDIS_URL", redis_url),
    ):
        monkeypatch.setenv(variable, value)
    file.write_text(sources_text([(first, mock.url)]) + "runs:\n  sources_per_run: 1\n")
    before = load_definitions()
    drain(load_config(file).source(first), store=store, redis_client=redis_client)

    # Added: a line in the file and a reload give it a partition, a sensor and the checks.
    file.write_text(sources_text([(first, mock.url), (second, mock.url)]) + "runs:\n  sources_per_run: 1\n")
    after = load_definitions()
    events = after.resolve_assets_def("events")
    assert second not in before.resolve_assets_def("events").partitions_def.get_partition_keys()
    assert set(events.partitions_def.get_partition_keys()) == {first, second}
    assert f"ingest_{second}" in {s.name for s in after.sensors}
    checks = {spec.name: spec for c in after.asset_checks for spec in c.check_specs}
    assert {"no_gaps", "cursor_matches_max_id", "quarantine_empty", "fresh", "not_stuck"} <= set(checks)
    assert all(second in c.partitions_def.get_partition_keys() for c in after.asset_checks)
    # With a real instance, the new sensor asks for a run for its slot (one source per run: slot 1).
    sensor = next(s for s in after.sensors if s.name == f"ingest_{second}")
    tick = sensor.evaluate_tick(
        dg.build_sensor_context(
            instance=dagster_instance,
            definitions=after,
            resources={"event_ingest": IngestResource(database_url=database_url, redis_url=redis_url)},
        )
    )
    [request] = tick.run_requests
    assert request.tags[SLOT_TAG] == "1" and request.run_config == {"ops": {"host_sources": {"config": {"slot": 1}}}}
    run = dagster_instance.create_run_for_job(
        after.resolve_job_def("ingest"), run_config=request.run_config, tags=request.tags
    )
    assert run.tags[SLOT_TAG] == "1"

    # Removed: no sensor, no partition; its data stays, and status calls it removed.
    file.write_text(sources_text([(second, mock.url)]))
    removed = load_definitions()
    assert f"ingest_{first}" not in {s.name for s in removed.sensors}
    assert first not in removed.resolve_assets_def("events").partitions_def.get_partition_keys()
    assert store.event_ids(first) == list(range(1, 11))
    from event_ingest.core.status import read_status

    rows = {r.source: r for r in read_status(store, [second]).rows}
    assert (rows[first].config, rows[first].events) == ("removed", 10)
    # `second` has no state yet and `first` (with state) went from the file at the same time: a rename? The
    # `ingest` run hosting `second` says so in its log when it starts (loading the definitions reads no state).
    log = logging.getLogger("test.renames")
    with_state = store.source_activity()
    ingest = IngestResource(database_url=database_url, redis_url=redis_url)
    renames = warn_of_renames(ingest, {second}, [second], log)
    assert [(r.old, r.new) for r in renames if r.old == first] == [(first, second)]
    assert "put the old name back" in renames[0].summary()
    assert warn_of_renames(ingest, {second}, ["another_source"], log) == []  # only the run's own sources
    assert {a.source for a in with_state} >= {first}
    # (Other tests' sources in this session's database are "removed" here too, so more pairs may show.)
    assert f"possibly {first!r} renamed (started from zero)" in rows[second].notes


def test_the_not_stuck_check_fails_in_the_ui_and_names_skip(make_mock, database_url, redis_url, redis_client, store):
    bad = b'{"id": 3' + b"0" * 5000 + b"}"
    page = {"kind": "body", "body_b64": base64.b64encode(b'{"events": [' + bad + b"]}").decode()}
    mock = make_mock(backlog=5)
    mock.control({"next": [{"kind": "events", "events": [{"id": 1}, {"id": 2}]}, page, page]})
    source = source_config(name(), mock.url)
    defs = build_definitions([source], IngestResource(database_url=database_url, redis_url=redis_url))
    result = defs.resolve_job_def("drain").execute_in_process(
        partition_key=source.name, raise_on_error=False, instance=dg.DagsterInstance.ephemeral()
    )
    # The drain cannot get past what it cannot read, and good pages may wait behind it: the run fails, saying so.
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert f"`event-ingest skip {source.name} --to-id N`" in failure.step_failure_data.user_failure_data.description
    with Store(database_url) as reader:
        check = not_stuck(reader, source)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert f"`event-ingest skip {source.name} --to-id N`" in check.description
    assert check.metadata["cursor"].value == 2
