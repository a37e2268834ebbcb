"""What the dev stack tells: stack.json for the other commands, the summary for people. Both are
made from a `StackView`, a snapshot of the parts, so they can be read and tested without a stack."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import DATABASE_URL_ENV, REDIS_URL_ENV, SOURCES_ENV, redact_url
from .child import Child
from .services import ServiceUrls
from .sources import SourcesPlan


def stack_env(services: ServiceUrls, sources: SourcesPlan) -> dict[str, str]:
    """What `event-ingest status` / `ingest` / Dagster need to find the stack."""
    return {
        DATABASE_URL_ENV: services.database_url,
        REDIS_URL_ENV: services.redis_url,
        SOURCES_ENV: str(sources.file),
    }


@dataclass(frozen=True)
class StackView:
    """The running stack as the reports show it."""

    state_dir: Path
    stack_file: Path
    logs_dir: Path
    started_at: float  # epoch
    services: ServiceUrls
    sources: SourcesPlan
    mock_children: tuple[Child, ...] = ()
    dagster: Child | None = None
    ready: bool = True  # no Dagster, or its UI answered
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return stack_env(self.services, self.sources)

    @property
    def from_env(self) -> frozenset[str]:
        """Variables the user set (not printed back: they may hold passwords)."""
        return self.services.from_env | ({SOURCES_ENV} if self.sources.from_env else set())


def stack_document(view: StackView) -> dict[str, Any]:
    """stack.json: URLs, pids and log paths of the running stack."""
    pg, rd = view.services.postgres, view.services.redis
    return {
        "pid": os.getpid(),
        "state_dir": str(view.state_dir),
        "started_at": datetime.fromtimestamp(view.started_at, UTC).isoformat(timespec="seconds"),
        "ready": view.ready,
        "env": view.env,
        "postgres": {
            "url": view.services.database_url,
            "dagster_url": view.services.dagster_database_url,
            "embedded": pg is not None,
            "pid": pg.pid if pg else None,
            "log": str(pg.log_path) if pg else None,
        },
        "redis": {
            "url": view.services.redis_url,
            "embedded": rd is not None,
            "pid": rd.pid if rd else None,
            "log": str(rd.log_path) if rd else None,
        },
        "sources": {
            "file": str(view.sources.file),
            "mock": view.sources.mock,
            "urls": view.sources.urls,
            "children": [c.describe() for c in view.mock_children],
        },
        "dagster": view.dagster.describe() if view.dagster else None,
        "timings": view.timings,
    }


def summary(view: StackView, ready_in_s: float) -> str:
    """What people read once the stack is up: where everything is, and how to look at it."""
    services = view.services
    pg_note = "embedded; Dagster storage in database 'dagster'" if services.postgres else f"from ${DATABASE_URL_ENV}"
    rows = []
    if view.dagster is not None:
        answering = "" if view.timings.get("ui_ready_s") else "  (not answering yet)"
        rows.append(("Dagster UI", f"{view.dagster.url}{answering}"))
    rows += [
        ("Postgres", f"{redact_url(services.database_url)}  ({pg_note})"),
        ("Redis", f"{redact_url(services.redis_url)}  ({'embedded' if services.redis else f'from ${REDIS_URL_ENV}'})"),
        ("sources file", str(view.sources.file)),
    ]
    by_name = {c.name: c for c in view.mock_children}
    for name, url in view.sources.urls.items():
        child = by_name.get(name)
        note = ""
        if child is not None:
            batch, errors = child.extra["events_per_response"], child.extra["error_rate"]
            note = f"  (mock, {batch} events per response, {errors:.0%} errors)"
        elif view.sources.generated:
            note = "  (not started: --no-mock-sources)"
        rows.append((f"  {name}", url + note))
    rows += [("state dir", str(view.state_dir)), ("stack file", str(view.stack_file))]
    logs = [s.log_path for s in (services.postgres, services.redis) if s is not None]
    logs += [c.log_path for c in view.mock_children] + ([view.dagster.log_path] if view.dagster else [])
    rows.append(("logs", f"{view.logs_dir}/  ({', '.join(p.name for p in logs)})"))
    width = max(len(k) for k, _ in rows)
    lines = ["", f"event-ingest dev is running (ready in {ready_in_s:.1f}s)", ""]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += ["", "Look at the ingest from another terminal:"]
    lines += [
        f"  export {k}={shlex.quote(v)}" if k not in view.from_env else f"  # {k}: as set in your environment"
        for k, v in view.env.items()
    ]
    lines += [
        "  event-ingest status",
        "",
        "Stop everything with Ctrl-C. The data is kept: the next `event-ingest dev` resumes.",
        "",
    ]
    return "\n".join(lines)
