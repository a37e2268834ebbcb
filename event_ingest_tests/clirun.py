"""Running the `event-ingest` command as a user does, for the CLI's tests."""

from __future__ import annotations

import os
import subprocess
import sys


def cli(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def environment(tmp_path, database_url, redis_url, sources_text):
    sources = tmp_path / "sources.yaml"
    sources.write_text(sources_text)
    return {
        **os.environ,
        "EVENT_INGEST_SOURCES": str(sources),
        "EVENT_INGEST_DATABASE_URL": database_url,
        "EVENT_INGEST_REDIS_URL": redis_url,
    }
