"""What the dev stack tells: stack.json for the other commands, the summary for people."""

from __future__ import annotations

import json
import os
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import DATABASE_URL_ENV, REDIS_URL_ENV, redact_url


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Readers never see half a file. Owner-only: URLs from the environment may hold passwords."""
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class Report:
    """DevStack's reports (the attributes are DevStack's, in dev.py)."""

    def write_stack(self) -> None:
        data = {
            "pid": os.getpid(),
            "state_dir": str(self.state_dir),
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(timespec="seconds"),
            "ready": self.dagster is None or self.ui_ready,
            "env": self.env(),
            "postgres": {
                "url": self.database_url,
                "dagster_url": self.dagster_database_url,
                "embedded": self.pg is not None,
                "pid": self.pg.pid if self.pg else None,
                "log": str(self.pg.log_path) if self.pg else None,
            },
            "redis": {
                "url": self.redis_url,
                "embedded": self.redis is not None,
                "pid": self.redis.pid if self.redis else None,
                "log": str(self.redis.log_path) if self.redis else None,
            },
            "sources": {
                "file": str(self.sources_file),
                "mock": self.mock,
                "urls": self.source_urls,
                "children": [c.describe() for c in self.sources],
            },
            "dagster": self.dagster.describe() if self.dagster else None,
            "timings": self.timings,
        }
        _write_json_atomic(self.stack_file, data)

    def print_summary(self) -> None:
        pg_note = "embedded; Dagster storage in database 'dagster'" if self.pg else f"from ${DATABASE_URL_ENV}"
        rows = []
        if self.dagster is not None:
            rows.append(
                ("Dagster UI", self.ui_url + ("" if self.timings.get("ui_ready_s") else "  (not answering yet)"))
            )
        rows += [
            ("Postgres", f"{redact_url(self.database_url)}  ({pg_note})"),
            ("Redis", f"{redact_url(self.redis_url)}  ({'embedded' if self.redis else f'from ${REDIS_URL_ENV}'})"),
            ("sources file", str(self.sources_file)),
        ]
        by_name = {c.name: c for c in self.sources}
        for name, url in self.source_urls.items():
            child = by_name.get(name)
            note = (
                (
                    f"  (mock, {child.extra['events_per_response']} events per response, "
                    f"{child.extra['error_rate']:.0%} errors)"
                )
                if child
                else ""
            )
            if child is None and self.generated_sources:
                note = "  (not started: --no-mock-sources)"
            rows.append((f"  {name}", url + note))
        rows += [("state dir", str(self.state_dir)), ("stack file", str(self.stack_file))]
        logs = [p for p in (self.pg and self.pg.log_path, self.redis and self.redis.log_path) if p]
        logs += [c.log_path for c in self.sources] + ([self.dagster.log_path] if self.dagster else [])
        rows.append(("logs", f"{self.logs_dir}/  ({', '.join(p.name for p in logs)})"))
        width = max(len(k) for k, _ in rows)
        ready = f"ready in {self.elapsed():.1f}s"
        lines = ["", f"event-ingest dev is running ({ready})", ""]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
        lines += ["", "Look at the ingest from another terminal:"]
        lines += [
            f"  export {k}={shlex.quote(v)}" if k not in self.from_env else f"  # {k}: as set in your environment"
            for k, v in self.env().items()
        ]
        lines += [
            "  event-ingest status",
            "",
            "Stop everything with Ctrl-C. The data is kept: the next `event-ingest dev` resumes.",
            "",
        ]
        self.say("\n".join(lines), prefix=False)
