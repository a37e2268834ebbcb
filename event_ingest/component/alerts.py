"""Alerts: run failures and failed asset checks, POSTed to a webhook, one message per incident.

A source that fails keeps failing: its sensor starts a run every few seconds, and every run and
every check of it would otherwise say so again. So an *incident* opens on the first failure of a
key (job and partition, or job and slot, for runs; asset, check and partition for checks) and closes
on the next success of that key; only the opening and the recovery are sent.

Runs: Dagster's own run status sensors (`@dg.run_failure_sensor`, and a success sensor for the
recovery), limited to this instance's jobs, deliver each run once. Whether a failure opens an
incident, or a success closes one, is read from the run history: the key's previous finished run
(failed: the incident is already open). So nothing is kept between ticks, and a daemon restart
neither repeats nor forgets one. A webhook that refuses is tried three times within the tick; then
the tick fails, showing the message (Dagster's run sensors move on past a run whatever the outcome).
An incident already open when the sensors first run is announced at its recovery only.

Checks: one sensor reads this instance's check results from Dagster's event log after its cursor;
the incidents, the position and the messages not delivered yet live in that cursor, so a daemon
restart neither repeats nor forgets one, and an undelivered message waits for the next tick.

Off unless EVENT_INGEST_ALERT_WEBHOOK_URL is set. The message is JSON with a ``text`` line (what
Slack-style webhooks show) and the fields: what failed, the source, the run id and, with
EVENT_INGEST_DAGSTER_UI_URL set, a link to the run. Secrets never go out: the sources' header
values and URL passwords are masked in every text taken from Dagster, and the webhook URL (which
often carries a token itself) is never logged.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import dagster as dg
import httpx

from ..config import ALERT_WEBHOOK_URL_ENV, DAGSTER_UI_URL_ENV, SourceConfig
from .ingest_job import SLOT_TAG, SOURCES_TAG
from .names import Names

# Dagster's run status sensors pass a beta parameter (`owners`) to SensorDefinition themselves: noise in every log.
warnings.filterwarnings(
    "ignore", message=".*Parameter `owners` of initializer `SensorDefinition", category=dg.BetaWarning
)

EVENTS_PER_PAGE = 500  # event-log records read per query; a tick reads pages until it is caught up
READ_BUDGET_S = 20.0  # ... or until it has read this long (the cursor resumes after the last record read)
OUTBOX_LIMIT = 200  # undelivered messages kept; beyond that the oldest go (and the log says so)
TEXT_LIMIT = 500  # characters of an error or description put in a message
POST_TIMEOUT_S = 10.0
RUN_POST_ATTEMPTS = 3  # a run alert has no outbox: tried this often within its tick
PARTITION_TAG = "dagster/partition"

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@")


@dataclass(frozen=True)
class Change:
    """One success or failure of one key, read from Dagster's event log."""

    storage_id: int
    key: str
    ok: bool
    fields: dict  # what the message says: kind, source, run_id, error ...


@dataclass
class AlertState:
    """The check sensor's cursor."""

    after: int | None = None  # the last event-log storage id looked at
    open: dict[str, dict] = field(default_factory=dict)  # key -> the change that opened it
    outbox: list[dict] = field(default_factory=list)  # messages to deliver, oldest first

    @classmethod
    def load(cls, cursor: str | None) -> AlertState:
        return cls(**json.loads(cursor)) if cursor else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def build_alerts(
    sources: Iterable[SourceConfig], jobs: list[dg.JobDefinition], names: Names = Names()
) -> dg.Definitions:
    """The alert sensors of one instance: its ``jobs``' runs and its `events` checks. ``sources`` only to
    know which header values must never be sent."""
    secrets = sorted({s for source in sources for s in source.secret_values()}, key=len, reverse=True)
    return dg.Definitions(
        sensors=[
            _run_sensor(names.of("alert_on_run_failure"), jobs, secrets, failed=True),
            _run_sensor(names.of("alert_on_run_recovery"), jobs, secrets, failed=False),
            _check_sensor(names, secrets),
        ]
    )


# ---- runs ---------------------------------------------------------------------------------------------


def _run_sensor(name: str, jobs: list[dg.JobDefinition], secrets: list[str], failed: bool) -> dg.SensorDefinition:
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
        error = _clip(_run_error(context.for_run_failure())) if failed else None
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
        message = _message(change, lambda text: _redact(text, secrets, url))
        _post_now(url, message)
        context.log.info(f"alert sent: {message['state']} {run.job_name}/{scope} (run {run.run_id[:8]})")

    common = dict(
        name=name,
        monitored_jobs=jobs,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    if failed:
        return dg.run_failure_sensor(
            description=f"Posts to {ALERT_WEBHOOK_URL_ENV} when runs of a job and partition (or slot) start failing.",
            **common,
        )(alert)
    return dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        description=f"Posts to {ALERT_WEBHOOK_URL_ENV} when runs of a job and partition (or slot) that were "
        "failing succeed again.",
        **common,
    )(alert)


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


def _post_now(url: str, message: dict) -> None:
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
        f"alert webhook did not take the message ({_redact(why, [], url)}) after {RUN_POST_ATTEMPTS} attempts: "
        f"{message['text']}"
    )


# ---- checks -------------------------------------------------------------------------------------------


def _check_sensor(names: Names, secrets: list[str]) -> dg.SensorDefinition:
    events = names.events

    @dg.sensor(
        name=names.of("alert_on_check_failure"),
        description=f"Posts to {ALERT_WEBHOOK_URL_ENV} when an asset check of {events.to_user_string()} "
        "starts failing for a partition, and when it passes again.",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        url = os.environ.get(ALERT_WEBHOOK_URL_ENV)
        if not url:
            return dg.SensorResult(skip_reason=f"alerts are off: {ALERT_WEBHOOK_URL_ENV} is not set")
        state = AlertState.load(context.cursor)
        if state.after is None:
            # First tick: alert on what happens from now on, not on the whole history.
            state.after = context.instance.event_log_storage.get_maximum_record_id() or 0
            return dg.SensorResult(skip_reason="watching from now on", cursor=state.dump())
        # Read until caught up, not one page: 1,000 sources publishing a result each minute is ~17 results a
        # second, more than one page per 30 s tick. A tick past its budget goes on from its cursor next time.
        changes: list[Change] = []
        deadline = time.monotonic() + READ_BUDGET_S
        while True:
            page, state.after, full = _check_changes(context.instance, events, state.after)
            changes += page
            if not full or time.monotonic() > deadline:
                break
        for change in changes:
            _apply(state, change, lambda text: _redact(text, secrets, url))
        if len(state.outbox) > OUTBOX_LIMIT:
            context.log.warning(f"alert webhook: {len(state.outbox) - OUTBOX_LIMIT} undelivered messages dropped")
            state.outbox = state.outbox[-OUTBOX_LIMIT:]
        sent = _deliver(state, url, context.log)
        return dg.SensorResult(
            skip_reason=f"{len(changes)} results read, {sent} messages sent, {len(state.outbox)} waiting, "
            f"{len(state.open)} incidents open",
            cursor=state.dump(),
        )

    return _sensor


def _apply(state: AlertState, change: Change, redact: Callable[[str], str]) -> None:
    """Open an incident on the first failure of a key, close it on its next success; queue those messages."""
    opened = state.open.get(change.key)
    if change.ok == (opened is None):
        return  # a success with nothing open, or one more failure of an open incident: nothing to say
    if change.ok:
        del state.open[change.key]
    else:
        state.open[change.key] = {"run_id": change.fields.get("run_id"), "storage_id": change.storage_id}
    state.outbox.append(_message(change, redact))


def _message(change: Change, redact: Callable[[str], str]) -> dict:
    message = {key: redact(value) if isinstance(value, str) else value for key, value in change.fields.items()}
    message["state"] = "resolved" if change.ok else "opened"
    message["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    ui = os.environ.get(DAGSTER_UI_URL_ENV)
    if ui and message.get("run_id"):
        message["run_url"] = f"{ui.rstrip('/')}/runs/{message['run_id']}"
    message["text"] = _text(message)
    return message


def _text(message: dict) -> str:
    what = (
        f"run of job {message['job']}"
        if message["kind"] == "run_failure"
        else f"check {message['check']} on {message['asset']}"
    )
    where = f" for source {message['source']}" if message.get("source") else ""
    if message["state"] == "resolved":
        return f"event-ingest: resolved: {what}{where} succeeds again (run {message['run_id']})"
    detail = message.get("error") or message.get("description") or ""
    link = message.get("run_url") or f"run {message['run_id']}"
    return f"event-ingest: {what}{where} failed ({link})" + (f": {detail}" if detail else "")


def _deliver(state: AlertState, url: str, log) -> int:
    """POST the outbox in order; stop at the first refusal and keep the rest for the next tick."""
    sent = 0
    with httpx.Client(timeout=POST_TIMEOUT_S, follow_redirects=False) as client:
        while state.outbox:
            try:
                response = client.post(url, json=state.outbox[0])
                delivered = 200 <= response.status_code < 300
                why = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                delivered, why = False, f"{type(exc).__name__}: {exc}"
            if not delivered:
                log.warning(
                    f"alert webhook did not take the message ({_redact(why, [], url)}); "
                    f"{len(state.outbox)} waiting for the next tick"
                )
                break
            state.outbox.pop(0)
            sent += 1
    return sent


def _redact(text: str, secrets: list[str], url: str) -> str:
    for secret in [url, *secrets]:
        text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def _clip(text: str | None) -> str | None:
    if not text:
        return text
    line = " ".join(text.split())
    return line if len(line) <= TEXT_LIMIT else line[: TEXT_LIMIT - 3] + "..."


# ---- reading Dagster's event log ----------------------------------------------------------------


def _innermost(error) -> str | None:
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else None


def _check_changes(instance: dg.DagsterInstance, asset_key: dg.AssetKey, after: int) -> tuple[list[Change], int, bool]:
    """Results of ``asset_key``'s checks in one page of records after ``after``, in event-log order; the last
    record read; whether the page was full (more may follow)."""
    records = instance.event_log_storage.get_event_records(
        # Not filtered by asset_key here: the event log does not index check evaluations by it.
        dg.EventRecordsFilter(dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
        limit=EVENTS_PER_PAGE,
        ascending=True,
    )
    changes = []
    last = records[-1].storage_id if records else after
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.asset_key != asset_key:
            continue  # another asset's check (another instance's, or the project's own)
        asset = evaluation.asset_key.to_user_string()
        partition = evaluation.partition
        metadata = {key: str(value.value) for key, value in evaluation.metadata.items()}
        changes.append(
            Change(
                record.storage_id,
                f"check:{asset}/{evaluation.check_name}/{partition or '-'}",
                evaluation.passed,
                {
                    "kind": "check_failure",
                    "asset": asset,
                    "check": evaluation.check_name,
                    "partition": partition,
                    "source": partition,
                    "severity": evaluation.severity.value,
                    "run_id": record.event_log_entry.run_id,
                    "description": _clip(evaluation.description or ", ".join(f"{k}: {v}" for k, v in metadata.items())),
                },
            )
        )
    return changes, last, len(records) == EVENTS_PER_PAGE
