"""Retention of Dagster's storage: tick retention from the project's dagster.yaml, and the cleanup job
deleting exactly the runs it should from a real (Postgres-backed) instance."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as db
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.utils import make_new_run_id

from event_ingest.component.retention import build_retention
from event_ingest.config import FAILED_RUN_RETENTION_DAYS_ENV, RUN_RETENTION_DAYS_ENV

ROOT = Path(__file__).resolve().parents[2]
PASSING = {"ok": True}
UNFINISHED = {"queued_ancient", "not_started_ancient", "starting_ancient", "started_ancient", "canceling_ancient"}


@dg.op
def work() -> None:
    if not PASSING["ok"]:
        raise RuntimeError("planted failure")


@dg.job
def some_job() -> None:
    work()


def test_dagster_yaml_purges_every_kind_of_tick(tmp_path, dagster_storage_url, monkeypatch):
    shutil.copy(ROOT / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("EVENT_INGEST_DAGSTER_DATABASE_URL", dagster_storage_url)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        sensors = instance.get_tick_retention_settings(InstigatorType.SENSOR)
        schedules = instance.get_tick_retention_settings(InstigatorType.SCHEDULE)
    # Dagster's own default keeps successful sensor ticks, and all schedule ticks, forever (-1).
    assert sensors == {TickStatus.SKIPPED: 1, TickStatus.SUCCESS: 7, TickStatus.STARTED: 7, TickStatus.FAILURE: 30}
    assert set(schedules.values()) == {30}


@pytest.fixture
def runs(dagster_instance):
    """Finished and unfinished runs of every age that matters, ages planted in the run storage."""
    instance = dagster_instance
    made: dict[str, str] = {}

    def finished(name: str, ok: bool, days_old: float) -> None:
        PASSING["ok"] = ok
        result = some_job.execute_in_process(instance=instance, raise_on_error=False)
        assert result.success is ok
        made[name] = result.run_id
        age(name, days_old)

    def stored(name: str, status: dg.DagsterRunStatus, days_old: float) -> None:
        # Written straight to the run storage, as the webserver or a sensor would queue it.
        origin = RemoteJobOrigin(
            RemoteRepositoryOrigin(
                GrpcServerCodeLocationOrigin(host="localhost", port=4000, location_name="event_ingest"),
                "__repository__",
            ),
            "some_job",
        )
        made[name] = instance.add_run(
            dg.DagsterRun(job_name="some_job", run_id=make_new_run_id(), status=status, remote_job_origin=origin)
        ).run_id
        age(name, days_old)

    def age(name: str, days_old: float) -> None:
        # Shifted relative to what the storage wrote, so the server's time zone does not matter.
        runs_table = db.table("runs", db.column("run_id"), db.column("create_timestamp"))
        with instance.run_storage.connect() as conn:
            conn.execute(
                runs_table.update()
                .where(runs_table.c.run_id == made[name])
                .values(
                    create_timestamp=runs_table.c.create_timestamp - db.text(f"interval '{days_old * 86400} seconds'")
                )
            )

    finished("ok_recent", True, 1)
    finished("ok_old", True, 8)
    finished("ok_older", True, 40)
    finished("failed_recent", False, 1)
    finished("failed_old", False, 8)  # older than 7 days but failed: kept for 30
    finished("failed_older", False, 31)
    for status in (
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ):
        stored(f"{status.value.lower()}_ancient", status, 100)
    stored("canceled_old", dg.DagsterRunStatus.CANCELED, 9)
    return made


def cleanup(instance, config: dict | None = None):
    job = build_retention().resolve_job_def("delete_old_runs")
    return job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"delete_runs_past_retention": {"config": config or {}}}},
    )


def remaining(instance, made: dict[str, str]) -> set[str]:
    return {name for name, run_id in made.items() if instance.get_run_by_id(run_id) is not None}


def test_cleanup_deletes_only_old_finished_runs_keeping_failed_ones_longer(dagster_instance, runs, monkeypatch):
    monkeypatch.delenv(RUN_RETENTION_DAYS_ENV, raising=False)
    monkeypatch.delenv(FAILED_RUN_RETENTION_DAYS_ENV, raising=False)
    result = cleanup(dagster_instance)  # the defaults: 7 days, failed 30
    assert result.success
    assert remaining(dagster_instance, runs) == {"ok_recent", "failed_recent", "failed_old", *UNFINISHED}
    for name in ("ok_old", "ok_older", "failed_older", "canceled_old"):  # the event log went with the run
        assert dagster_instance.all_logs(runs[name]) == []
    assert dagster_instance.all_logs(runs["ok_recent"])
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    counts = output.event_specific_data.metadata
    assert (counts["deleted_succeeded_or_canceled"].value, counts["deleted_failed"].value) == (3, 1)


def test_limits_from_the_environment_and_from_run_config(dagster_instance, runs, monkeypatch):
    monkeypatch.setenv(RUN_RETENTION_DAYS_ENV, "0.5")
    monkeypatch.setenv(FAILED_RUN_RETENTION_DAYS_ENV, "9")
    assert cleanup(dagster_instance).success
    assert remaining(dagster_instance, runs) == {"failed_recent", "failed_old", *UNFINISHED}
    # The run config wins over the environment.
    assert cleanup(dagster_instance, {"keep_days": 0.5, "keep_failed_days": 0.5}).success
    assert remaining(dagster_instance, runs) == {*UNFINISHED}


@pytest.mark.parametrize(
    "config, env, message",
    [
        ({"keep_days": 10, "keep_failed_days": 5}, None, "failed runs would be kept 5 days, less than the 10 days"),
        ({"keep_days": 0}, None, "run config keep_days: 0.0 is not a positive number of days"),
        ({}, "a week", f"environment variable {RUN_RETENTION_DAYS_ENV}: 'a week' is not a number of days"),
    ],
)
def test_limits_that_make_no_sense_fail_the_run_and_delete_nothing(
    dagster_instance, runs, monkeypatch, config, env, message
):
    if env is not None:
        monkeypatch.setenv(RUN_RETENTION_DAYS_ENV, env)
    before = remaining(dagster_instance, runs)
    result = cleanup(dagster_instance, config)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert message in failure.step_failure_data.user_failure_data.description
    assert remaining(dagster_instance, runs) == before == set(runs)


def test_the_cleanup_is_scheduled_hourly_and_on_by_default(dagster_instance):
    defs = build_retention()
    dg.Definitions.validate_loadable(defs)
    [schedule] = defs.schedules
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING and schedule.cron_schedule == "17 * * * *"
    [request] = schedule.evaluate_tick(dg.build_schedule_context(instance=dagster_instance)).run_requests
    assert schedule.job_name == "delete_old_runs" and request.run_config == {}
