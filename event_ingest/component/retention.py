"""Retention: Dagster's own storage must not grow without end.

Each source's sensor starts a run every minute or two, day and night, and every run writes its
run record and a few dozen event-log rows. Ticks are purged by Dagster itself (``retention:`` in
dagster.yaml); runs are not, so an hourly job deletes finished runs older than a limit, with
their event logs, keeping failed runs longer (they are what an operator looks back at) and never
touching a run that has not finished.

Limits, in days (fractions allowed), from the job's run config, else the environment, else the
defaults: ``keep_days`` / EVENT_INGEST_RUN_RETENTION_DAYS (7) for runs that succeeded or were
canceled, ``keep_failed_days`` / EVENT_INGEST_FAILED_RUN_RETENTION_DAYS (30) for failed ones.
A run's age is counted from its creation. The materialization history and check results those
runs recorded go with them; the events themselves live in the events table and are not touched.
"""

# No `from __future__ import annotations`: Dagster reads the op's config annotation at definition time.
import os
from datetime import UTC, datetime, timedelta

import dagster as dg

from ..config import (
    DEFAULT_FAILED_RUN_RETENTION_DAYS,
    DEFAULT_RUN_RETENTION_DAYS,
    FAILED_RUN_RETENTION_DAYS_ENV,
    RUN_RETENTION_DAYS_ENV,
)

MAX_RUNS_PER_CLEANUP = 5000  # one cleanup run's share; an hourly schedule catches up on a backlog

# Only these are ever deleted: a run in any other status (queued, starting, started, canceling)
# may still be working, or be watched by a sensor.
DONE_STATUSES = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED]
FAILED_STATUSES = [dg.DagsterRunStatus.FAILURE]


class RunRetentionConfig(dg.Config):
    keep_days: float | None = None  # default: $EVENT_INGEST_RUN_RETENTION_DAYS, else 7
    keep_failed_days: float | None = None  # default: $EVENT_INGEST_FAILED_RUN_RETENTION_DAYS, else 30
    max_runs: int = MAX_RUNS_PER_CLEANUP


def _limit_days(configured: float | None, env: str, default: float, what: str) -> float:
    if configured is not None:
        value, where = configured, f"run config {what}"
    else:
        raw = os.environ.get(env)
        if not raw:
            return default
        where = f"environment variable {env}"
        try:
            value = float(raw)
        except ValueError:
            raise dg.Failure(description=f"{where}: {raw!r} is not a number of days") from None
    if not value > 0:
        raise dg.Failure(description=f"{where}: {value!r} is not a positive number of days")
    return value


def retention_limits(config: RunRetentionConfig) -> tuple[float, float]:
    """(days to keep finished runs, days to keep failed runs), with one clear error if they make no sense."""
    keep = _limit_days(config.keep_days, RUN_RETENTION_DAYS_ENV, DEFAULT_RUN_RETENTION_DAYS, "keep_days")
    keep_failed = _limit_days(
        config.keep_failed_days, FAILED_RUN_RETENTION_DAYS_ENV, DEFAULT_FAILED_RUN_RETENTION_DAYS, "keep_failed_days"
    )
    if keep_failed < keep:
        raise dg.Failure(
            description=f"failed runs would be kept {keep_failed:g} days, less than the {keep:g} days "
            "of the others: set keep_failed_days at least as long as keep_days"
        )
    return keep, keep_failed


def build_retention(prefix: str = "") -> dg.Definitions:
    """The job and its hourly schedule. They act on the whole Dagster instance (every job's runs), so a
    project builds them once: the component's ``run_retention`` is off unless asked for."""

    @dg.op(
        name=f"{prefix}delete_runs_past_retention",
        description="Delete finished runs (and their event logs) older than the retention limits.",
    )
    def delete_runs_past_retention(context: dg.OpExecutionContext, config: RunRetentionConfig) -> dg.Output:
        keep, keep_failed = retention_limits(config)
        now = datetime.now(UTC)
        budget = config.max_runs
        deleted: dict[str, int] = {}
        for label, statuses, days in (
            ("succeeded_or_canceled", DONE_STATUSES, keep),
            ("failed", FAILED_STATUSES, keep_failed),
        ):
            records = (
                context.instance.get_run_records(
                    filters=dg.RunsFilter(statuses=statuses, created_before=now - timedelta(days=days)),
                    limit=budget,
                    order_by="create_timestamp",
                    ascending=True,
                )
                if budget > 0
                else []
            )
            for record in records:
                context.instance.delete_run(record.dagster_run.run_id)
            deleted[label] = len(records)
            budget -= len(records)
            context.log.info(
                f"deleted {len(records)} {label.replace('_', ' ')} runs created more than {days:g} days ago"
            )
        return dg.Output(
            None,
            metadata={
                "deleted_succeeded_or_canceled": dg.MetadataValue.int(deleted["succeeded_or_canceled"]),
                "deleted_failed": dg.MetadataValue.int(deleted["failed"]),
                "keep_days": dg.MetadataValue.float(keep),
                "keep_failed_days": dg.MetadataValue.float(keep_failed),
                "more_left": dg.MetadataValue.bool(budget <= 0),
            },
        )

    @dg.job(
        name=f"{prefix}delete_old_runs",
        executor_def=dg.in_process_executor,
        description="Retention of Dagster's run storage: finished runs older than the limits are deleted.",
    )
    def cleanup_job() -> None:
        delete_runs_past_retention()

    schedule = dg.ScheduleDefinition(
        name=f"{prefix}delete_old_runs_hourly",
        job=cleanup_job,
        cron_schedule="17 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Hourly, so each cleanup is small and a backlog is worked off in steps.",
    )
    return dg.Definitions(jobs=[cleanup_job], schedules=[schedule])
