"""DevStack in this process, with services and a sources file given (nothing embedded, no mocks,
no Dagster): the parts wired together, the stack file written, and everything undone on stop."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from event_ingest.config import DATABASE_URL_ENV, REDIS_URL_ENV, SOURCES_ENV
from event_ingest.devstack.dev import DevStack, add_arguments
from event_ingest.devstack.errors import DevError
from event_ingest.devstack.runtime import Console
from event_ingest.devstack.statedir import StateDir


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def given(tmp_path, own_database, redis_url) -> dict[str, str]:
    sources = tmp_path / "mine.yaml"
    sources.write_text("sources:\n  - name: devstack_given\n    url: http://127.0.0.1:9/events\n")
    return {DATABASE_URL_ENV: own_database, REDIS_URL_ENV: str(redis_url), SOURCES_ENV: str(sources)}


def test_a_stack_of_given_parts_starts_reports_and_stops(tmp_path, given):
    out = io.StringIO()
    stack = DevStack(parse("--no-dagster", "--data-dir", str(tmp_path / "state")), Console(out), given)
    try:
        stack.start()
        assert not stack.started_anything and stack.fleet is None and stack.dagster is None
        doc = json.loads(stack.state.stack_file.read_text())
        assert (
            doc["ready"]
            and doc["env"] == given
            and doc["sources"]["urls"] == {"devstack_given": "http://127.0.0.1:9/events"}
        )
        assert not doc["postgres"]["embedded"] and not doc["redis"]["embedded"]
        assert stack.first_dead() is None
        stack.print_summary()
        for name in given:
            assert f"  # {name}: as set in your environment" in out.getvalue()
    finally:
        assert stack.stop()
    assert not stack.state.stack_file.exists() and not stack.state.locked
    with StateDir(tmp_path / "state"):  # the lock is free
        pass


def test_a_port_out_of_range_fails_before_the_state_dir(tmp_path):
    stack = DevStack(parse("--sources-port-base", "65534", "--data-dir", str(tmp_path / "state")), Console(), {})
    with pytest.raises(DevError, match="--sources-port-base 65534 is not a usable TCP port"):
        stack.start()
    assert stack.stop() and not (tmp_path / "state").exists()
