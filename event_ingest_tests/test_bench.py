"""The benchmark runs end to end and reads its figures from the source's own recorder.

The speed target itself is judged by `event-ingest bench`, not here: timing belongs in benchmarks.
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_reports_rate_and_spacing_at_the_source(database_url, redis_url):
    env = {**os.environ, "EVENT_INGEST_DATABASE_URL": database_url, "EVENT_INGEST_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", "bench", "--seconds", "3", "--page-size", "100",
         "--target", "0", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["requests"] >= 5
    assert result["gaps_under_interval"] == 0
    assert result["min_gap_ms_at_source"] >= 200
    assert result["events_stored"] == result["requests"] * 100  # every page full, every page stored
    assert 0 < result["fraction_of_max"] <= 1.0
