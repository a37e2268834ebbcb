"""One alert message: what changed, as JSON with a ``text`` line, secrets masked."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ...config import DAGSTER_UI_URL_ENV

TEXT_LIMIT = 500  # characters of an error or description put in a message
POST_TIMEOUT_S = 10.0

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@")

# One webhook message (JSON): the change's fields, then state, at, run_url and text.
Message = dict[str, object]


@dataclass(frozen=True)
class Change:
    """One success or failure of one key: a finished run, or a check result read from Dagster's event log."""

    storage_id: int
    key: str
    ok: bool
    fields: Message  # what the message says: kind, source, run_id, error ...


def build_message(change: Change, mask: Callable[[str], str]) -> Message:
    """The webhook message of ``change``, every text in it passed through ``mask``."""
    message = {key: mask(value) if isinstance(value, str) else value for key, value in change.fields.items()}
    message["state"] = "resolved" if change.ok else "opened"
    message["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    ui = os.environ.get(DAGSTER_UI_URL_ENV)
    if ui and message.get("run_id"):
        message["run_url"] = f"{ui.rstrip('/')}/runs/{message['run_id']}"
    message["text"] = _text(message)
    return message


def _text(message: Message) -> str:
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


def redact(text: str, secrets: list[str], url: str) -> str:
    for secret in [url, *secrets]:
        text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def clip(text: str | None) -> str | None:
    if not text:
        return text
    line = " ".join(text.split())
    return line if len(line) <= TEXT_LIMIT else line[: TEXT_LIMIT - 3] + "..."
