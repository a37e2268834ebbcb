"""Alerts: run failures and failed asset checks, POSTed to a webhook, one message per incident.

A source that fails keeps failing: its sensor starts a run every few seconds, and every run and
every check of it would otherwise say so again. So an *incident* opens on the first failure of a
key (job and partition for runs; asset, check and partition for checks) and closes on the next
success of that key; only the opening and the recovery are sent. The incidents, the position in
Dagster's event log and the messages not delivered yet live in the sensor's cursor, so a daemon
restart neither repeats nor forgets one.

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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import dagster as dg
import httpx
from dagster._core.event_api import EventRecordsFilter, RunStatusChangeRecordsFilter
from dagster._core.events import DagsterEventType

from ..config import ALERT_WEBHOOK_URL_ENV, DAGSTER_UI_URL_ENV, SourceConfig

EVENTS_PER_TICK = 500  # event-log records read per tick; the cursor resumes after the last one
OUTBOX_LIMIT = 200  # undelivered messages kept; beyond that the oldest go (and the log says so)
TEXT_LIMIT = 500  # characters of an error or description put in a message
POST_TIMEOUT_S = 10.0

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
    """The sensor cursor."""

    after: int | None = None  # the last event-log storage id looked at
    open: dict[str, dict] = field(default_factory=dict)  # key -> the change that opened it
    outbox: list[dict] = field(default_factory=list)  # messages to deliver, oldest first

    @classmethod
    def load(cls, cursor: str | None) -> AlertState:
        return cls(**json.loads(cursor)) if cursor else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def build_alerts(sources: Iterable[SourceConfig]) -> dg.Definitions:
    """The two alert sensors; ``sources`` only to know which header values must never be sent."""
    secrets = sorted({s for source in sources for s in source.secret_values()}, key=len, reverse=True)
    return dg.Definitions(
        sensors=[
            _alert_sensor(
                "alert_on_run_failure",
                f"Posts to {ALERT_WEBHOOK_URL_ENV} when runs of a job and "
                "partition start failing, and when they succeed again.",
                _run_changes,
                secrets,
            ),
            _alert_sensor(
                "alert_on_check_failure",
                f"Posts to {ALERT_WEBHOOK_URL_ENV} when an asset check of a "
                "partition starts failing, and when it passes again.",
                _check_changes,
                secrets,
            ),
        ]
    )


def _alert_sensor(name: str, description: str, read_changes: Callable, secrets: list[str]) -> dg.SensorDefinition:
    @dg.sensor(
        name=name, description=description, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
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
        changes = read_changes(context.instance, state.after)
        for change in changes:
            _apply(state, change, lambda text: _redact(text, secrets, url))
            state.after = change.storage_id
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
    message = {key: redact(value) if isinstance(value, str) else value for key, value in change.fields.items()}
    message["state"] = "resolved" if change.ok else "opened"
    message["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    ui = os.environ.get(DAGSTER_UI_URL_ENV)
    if ui and message.get("run_id"):
        message["run_url"] = f"{ui.rstrip('/')}/runs/{message['run_id']}"
    message["text"] = _text(message)
    state.outbox.append(message)


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


def _run_changes(instance: dg.DagsterInstance, after: int) -> list[Change]:
    """Run successes and failures after ``after``, in event-log order."""
    found, bound = [], None
    for event_type in (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS):
        records = instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(event_type, after_storage_id=after),
            limit=EVENTS_PER_TICK,
            ascending=True,
        ).records
        if len(records) == EVENTS_PER_TICK:
            # The two lists are read separately: take neither past the end of a truncated one.
            bound = min(bound or records[-1].storage_id, records[-1].storage_id)
        found.extend(records)
    changes = []
    for record in sorted(found, key=lambda r: r.storage_id):
        if bound is not None and record.storage_id > bound:
            break
        run = instance.get_run_by_id(record.run_id)
        if run is None:  # deleted since (retention)
            continue
        partition = run.tags.get("dagster/partition")
        # An `ingest` run hosts a slot of sources: the slot is what fails and recovers.
        slot = run.tags.get("event_ingest/slot")
        scope = partition or (f"slot {slot}" if slot is not None else "-")
        ok = record.event_log_entry.dagster_event.event_type == DagsterEventType.RUN_SUCCESS
        changes.append(
            Change(
                record.storage_id,
                f"run:{run.job_name}/{scope}",
                ok,
                {
                    "kind": "run_failure",
                    "job": run.job_name,
                    "partition": partition,
                    "source": run.tags.get("event_ingest/sources") or partition,
                    "run_id": run.run_id,
                    "error": None if ok else _clip(_run_error(instance, record)),
                },
            )
        )
    return changes


def _run_error(instance: dg.DagsterInstance, record) -> str:
    """The first failed step's own words (a dg.Failure's description, or the innermost exception)."""
    steps = instance.get_records_for_run(record.run_id, of_type=DagsterEventType.STEP_FAILURE, limit=1).records
    if steps:
        data = steps[0].event_log_entry.dagster_event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        return _innermost(data.error) or record.event_log_entry.message
    failure = record.event_log_entry.dagster_event.event_specific_data
    return _innermost(getattr(failure, "error", None)) or record.event_log_entry.message


def _innermost(error) -> str | None:
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else None


def _check_changes(instance: dg.DagsterInstance, after: int) -> list[Change]:
    """Asset check results after ``after``, in event-log order."""
    records = instance.event_log_storage.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
        limit=EVENTS_PER_TICK,
        ascending=True,
    )
    changes = []
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
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
    return changes
