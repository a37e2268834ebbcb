"""The benchmark cases run end to end, and their figures come from the source's recorder and from Postgres.

The speed targets themselves are judged by `event-ingest bench`, not here: timing belongs in benchmarks.
"""

import json
import os
import subprocess
import sys

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(args, database_url, redis_url, timeout=300):
    env = {**os.environ, "EVENT_INGEST_DATABASE_URL": database_url, "EVENT_INGEST_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", "bench", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_reports_rate_and_spacing_at_the_source(database_url, redis_url, tmp_path):
    # No case named: the drain case, with the options it always had.
    result = bench(
        ["--seconds", "3", "--page-size", "100", "--target", "0", "--json", "--out", str(tmp_path)],
        database_url,
        redis_url,
    )
    assert result["requests"] >= 5
    assert result["gaps_under_interval"] == 0
    assert result["min_gap_ms_at_source"] >= 200
    assert result["events_stored"] == result["requests"] * 100  # every page full, every page stored
    assert 0 < result["fraction_of_max"] <= 1.0  # (requests - 1) over the source's own span
    assert json.loads((tmp_path / "drain.json").read_text()) == result


@pytest.mark.slow
def test_bench_commit_times_the_same_rows_three_ways(database_url, redis_url, tmp_path):
    result = bench(["commit", "--quick", "--json", "--out", str(tmp_path)], database_url, redis_url)
    assert json.loads((tmp_path / "commit.json").read_text()) == result
    assert (tmp_path / "commit.png").read_bytes().startswith(PNG_MAGIC)
    events = result["events_per_page_size"]
    runs = {(r["page_size"], r["path"]): r for r in result["runs"]}
    assert set(runs) == {
        (size, path)
        for size in (1000, 100)
        for path in ("commit_page", "copy_events", "copy_plain", "commit_page_replay")
    }
    for (size, path), run in runs.items():
        # Rows counted in Postgres after the run, not the bench's own tally.
        assert run["rows_in_postgres"] == events, (size, path)
        assert run["events_per_s"] > 0
        if path != "commit_page_replay":
            assert run["pages"] == events // size
    assert set(result["ratios"]) == {"1000", "100"}


@pytest.mark.slow
def test_bench_checks_measures_checks_that_still_find_a_deleted_event(database_url, redis_url, tmp_path):
    result = bench(["checks", "--quick", "--json", "--out", str(tmp_path)], database_url, redis_url)
    assert (tmp_path / "checks.png").read_bytes().startswith(PNG_MAGIC)
    assert [row["events"] for row in result["sizes"]] == [20_000, 200_000]
    for row in result["sizes"]:
        size = row["events"]
        assert row["rows_counted"] == row["status_events"] == row["rollup_events"] == size
        assert row["gap_check_passed"] and row["cursor_check_passed"]
        assert row["one_deleted_found"]
        assert row["ingest_times_fetched"] == size
