"""Alerts: run failures and failed asset checks, POSTed to a webhook, one message per incident.

A source that fails keeps failing: its sensor starts a run every few seconds, and every run and
every check of it would otherwise say so again. So an *incident* opens on the first failure of a
key (job and partition, or job and slot, for runs; asset, check and partition for checks) and closes
on the next success of that key; only the opening and the recovery are sent. Runs and checks are
watched each their own way (runs.py: the run history; check_results.py: the event log and a cursor).

Off unless EVENT_INGEST_ALERT_WEBHOOK_URL is set. The message is JSON with a ``text`` line (what
Slack-style webhooks show) and the fields: what failed, the source, the run id and, with
EVENT_INGEST_DAGSTER_UI_URL set, a link to the run. Secrets never go out: the sources' header
values and URL passwords are masked in every text taken from Dagster, and the webhook URL (which
often carries a token itself) is never logged.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from ...config import SourceConfig
from ..names import Names
from .check_results import check_sensor
from .runs import run_sensors


def build_alerts(
    sources: Iterable[SourceConfig], watched: Iterable[dg.Definitions], names: Names = Names()
) -> dg.Definitions:
    """The alert sensors of one instance: the runs of every job in ``watched``, and its `events` checks.
    ``sources`` only to know which header values must never be sent."""
    secrets = sorted({s for source in sources for s in source.secret_values()}, key=len, reverse=True)
    return dg.Definitions(sensors=[*run_sensors(watched, secrets, names), check_sensor(names, secrets)])
