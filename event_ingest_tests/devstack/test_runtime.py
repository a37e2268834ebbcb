"""The dev stack's shared primitives alone: the teardown's order and verdict, the interrupts."""

from __future__ import annotations

import io

import pytest

from event_ingest.devstack.runtime import Console, Interrupted, Interrupts, Teardown


def test_teardown_stops_in_reverse_order_and_reports_unclean():
    stopped: list[str] = []
    with Teardown() as teardown:
        teardown.callback(stopped.append, "state dir")
        teardown.on_close(lambda: stopped.append("postgres") is None)
        teardown.on_close(lambda: stopped.append("sources") is not None)  # killed one: unclean
        teardown.on_close(lambda: stopped.append("dagster") is None)
        assert teardown.stops == 3
    assert stopped == ["dagster", "sources", "postgres", "state dir"]
    assert not teardown.clean


def test_teardown_runs_the_rest_when_a_stop_raises():
    stopped: list[str] = []
    teardown = Teardown()
    teardown.on_close(lambda: stopped.append("first") is None)
    teardown.on_close(lambda: 1 / 0 == 0)
    with pytest.raises(ZeroDivisionError):
        teardown.close()
    assert stopped == ["first"]


def test_interrupts_count_and_hurry():
    interrupts = Interrupts()
    interrupts.check()
    interrupts.on_signal(2, None)
    with pytest.raises(Interrupted):
        interrupts.check()
    interrupts.sleep(30)  # cut short at once
    interrupts.stopping()
    assert not interrupts.hurry
    assert not interrupts.wait_for(lambda: False, 0.05)
    interrupts.on_signal(2, None)
    assert interrupts.hurry and not interrupts.wait_for(lambda: False, 30)  # Ctrl-C again: no waiting
    assert interrupts.wait_for(lambda: True, 0)


def test_console_writes_whole_lines_and_survives_a_closed_stream():
    out = io.StringIO()
    console = Console(out)
    console.say("hello")
    console.say("summary", prefix=False)
    assert out.getvalue() == "event-ingest dev: hello\nsummary\n"
    out.close()
    assert console.write("gone\n") is False
