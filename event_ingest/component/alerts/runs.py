"""Run alerts: Dagster's own run status sensors, one for failures and one for recoveries.

`@dg.run_failure_sensor` and a success sensor, limited to this instance's jobs, deliver each run
once. Whether a failure opens an incident, or a success closes one, is read from the run history:
the key's previous finished run (failed: the incident is already open). So nothing is kept between
ticks, and a daemon restart neither repeats nor forgets one. A webhook that refuses is tried three
times within the tick; then the tick fails, showing the message (Dagster's run sensors move on past
a run whatever the outcome). An incident already open when the sensors first run is announced at
its recovery only.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Protocol

import dagster as dg
import httpx

from ...config import ALERT_WEBHOOK_URL_ENV
from ..ingest_job import SLOT_TAG, SOURCES_TAG
from ..names import Names
from .message import POST_TIMEOUT_S, Change, Message, build_message, clip, redact

# Dagster's run status sensors pass a beta parameter (`owners`) to SensorDefinition themselves: noise in every log.
warnings.filterwarnings(
    "ignore", message=".*Parameter `owners` of initializer `SensorDefinition", category=dg.BetaWarning
)

RUN_POST_ATTEMPTS = 3  # a run alert has no outbox: tried this often within its tick
PARTITION_TAG = "dagster/partition"


def run_sensors(watched: Iterable[dg.Definitions], secrets: list[str], names: Names) -> list[dg.SensorDefinition]:
    """The failure and the recovery sensor of the runs of every job in ``watched``."""
    jobs = [job for defs in watched for job in defs.jobs or ()]
    return [
        dg.run_failure_sensor(
            name=names.of("alert_on_run_failure"),
            monitored_jobs=jobs,
            minimum_interval_seconds=30,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=f"Posts to {ALERT_WEBHOOK_URL_ENV} when runs of a job and partition (or slot) start failing.",
        )(_alert(secrets, failed=True)),
        dg.run_status_sensor(
            run_status=dg.DagsterRunStatus.SUCCESS,
            name=names.of("alert_on_run_recovery"),
            monitored_jobs=jobs,
            minimum_interval_seconds=30,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=f"Posts to {ALERT_WEBHOOK_URL_ENV} when runs of a job and partition (or slot) that were "
            "failing succeed again.",
        )(_alert(secrets, failed=False)),
    ]


def _alert(secrets: list[str], failed: bool) -> Callable[[dg.RunStatusSensorContext], None]:
    """The body of the failure (``failed``) or the recovery sensor."""

    # Returns None: Dagster then goes on to the next run in the same tick (a returned value ends the tick).
    def alert(context: dg.RunStatusSensorContext) -> None:
        url = os.environ.get(ALERT_WEBHOOK_URL_ENV)
        if not url:
            return
        run = context.dagster_run
        scope, tags = _run_scope(run)
        previous = _previous_outcome(context.instance, run, tags)
        if failed == (previous == dg.DagsterRunStatus.FAILURE):
            # A failure after a failure: the incident is open. A success after a success: nothing to close.
            return
        partition = run.tags.get(PARTITION_TAG)
        error = clip(_run_error(context.for_run_failure())) if failed else None
        change = Change(
            0,
            f"run:{run.job_name}/{scope}",
            not failed,
            {
                "kind": "run_failure",
                "job": run.job_name,
                "partition": partition,
                "source": run.tags.get(SOURCES_TAG) or partition,
                "run_id": run.run_id,
                "error": error,
            },
        )
        message = build_message(change, lambda text: redact(text, secrets, url))
        _post_now(url, message)
        context.log.info(f"alert sent: {message['state']} {run.job_name}/{scope} (run {run.run_id[:8]})")

    return alert


def _run_scope(run: dg.DagsterRun) -> tuple[str, dict[str, str]]:
    """What fails and recovers: a one-off drain's partition, or an `ingest` run's slot."""
    partition = run.tags.get(PARTITION_TAG)
    if partition is not None:
        return partition, {PARTITION_TAG: partition}
    slot = run.tags.get(SLOT_TAG)
    if slot is not None:
        return f"slot {slot}", {SLOT_TAG: slot}
    return "-", {}


def _previous_outcome(
    instance: dg.DagsterInstance, run: dg.DagsterRun, tags: dict[str, str]
) -> dg.DagsterRunStatus | None:
    """How the key's previous finished run ended (None: there is none)."""
    record = instance.get_run_record_by_id(run.run_id)
    if record is None:
        return None
    before = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=run.job_name,
            tags=tags,
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
            created_before=record.create_timestamp,
        ),
        limit=1,
    )
    return before[0].dagster_run.status if before else None


def _run_error(context: dg.RunFailureSensorContext) -> str | None:
    """The first failed step's own words (a dg.Failure's description, or the innermost exception)."""
    steps = context.get_step_failure_events()
    if steps:
        data = steps[0].step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        return _innermost(data.error) or steps[0].message
    failure = context.failure_event
    return _innermost(getattr(failure.event_specific_data, "error", None)) or failure.message


def _post_now(url: str, message: Message) -> None:
    why = ""
    with httpx.Client(timeout=POST_TIMEOUT_S, follow_redirects=False) as client:
        for attempt in range(RUN_POST_ATTEMPTS):
            if attempt:
                time.sleep(attempt)
            try:
                response = client.post(url, json=message)
                if 200 <= response.status_code < 300:
                    return
                why = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
    raise RuntimeError(
        f"alert webhook did not take the message ({redact(why, [], url)}) after {RUN_POST_ATTEMPTS} attempts: "
        f"{message['text']}"
    )


class ErrorInfo(Protocol):
    """What Dagster keeps of an exception (its SerializableErrorInfo, which `dagster` does not export)."""

    @property
    def message(self) -> str: ...

    @property
    def cause(self) -> ErrorInfo | None: ...


def _innermost(error: ErrorInfo | None) -> str | None:
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else None
