"""Check alerts: one sensor reads this instance's check results from Dagster's event log.

It reads after its cursor; the incidents, the position and the messages not delivered yet live in
that cursor, so a daemon restart neither repeats nor forgets one, and an undelivered message waits
for the next tick.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import dagster as dg
import httpx

from ...config import ALERT_WEBHOOK_URL_ENV
from ..names import Names
from .message import POST_TIMEOUT_S, Change, Message, build_message, clip, redact

EVENTS_PER_PAGE = 500  # event-log records read per query; a tick reads pages until it is caught up
READ_BUDGET_S = 20.0  # ... or until it has read this long (the cursor resumes after the last record read)
OUTBOX_LIMIT = 200  # undelivered messages kept; beyond that the oldest go (and the log says so)


@dataclass
class AlertState:
    """The check sensor's cursor."""

    after: int | None = None  # the last event-log storage id looked at
    open: dict[str, dict[str, object]] = field(default_factory=dict)  # key -> the change that opened it
    outbox: list[Message] = field(default_factory=list)  # messages to deliver, oldest first

    @classmethod
    def load(cls, cursor: str | None) -> AlertState:
        return cls(**json.loads(cursor)) if cursor else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def check_sensor(names: Names, secrets: list[str]) -> dg.SensorDefinition:
    """The sensor of the results of ``names.events``' checks."""
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
            _apply(state, change, lambda text: redact(text, secrets, url))
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


def _apply(state: AlertState, change: Change, mask: Callable[[str], str]) -> None:
    """Open an incident on the first failure of a key, close it on its next success; queue those messages."""
    opened = state.open.get(change.key)
    if change.ok == (opened is None):
        return  # a success with nothing open, or one more failure of an open incident: nothing to say
    if change.ok:
        del state.open[change.key]
    else:
        state.open[change.key] = {"run_id": change.fields.get("run_id"), "storage_id": change.storage_id}
    state.outbox.append(build_message(change, mask))


def _deliver(state: AlertState, url: str, log: logging.Logger) -> int:
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
                    f"alert webhook did not take the message ({redact(why, [], url)}); "
                    f"{len(state.outbox)} waiting for the next tick"
                )
                break
            state.outbox.pop(0)
            sent += 1
    return sent


def _check_changes(instance: dg.DagsterInstance, asset_key: dg.AssetKey, after: int) -> tuple[list[Change], int, bool]:
    """Results of ``asset_key``'s checks in one page of records after ``after``, in event-log order; the last
    record read; whether the page was full (more may follow)."""
    records = instance.event_log_storage.get_event_records(
        # Not filtered by asset_key here: the event log does not index check evaluations by it.
        dg.EventRecordsFilter(dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
        limit=EVENTS_PER_PAGE,
        ascending=True,
    )
    changes: list[Change] = []
    last = records[-1].storage_id if records else after
    for record in records:
        evaluation = record.event_log_entry.get_dagster_event().event_specific_data
        assert isinstance(evaluation, dg.AssetCheckEvaluation)  # the filter reads check evaluations only
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
                    "description": clip(evaluation.description or ", ".join(f"{k}: {v}" for k, v in metadata.items())),
                },
            )
        )
    return changes, last, len(records) == EVENTS_PER_PAGE
