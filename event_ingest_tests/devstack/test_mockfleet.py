"""MockFleet alone: three mock sources answering like the original system's, a death noticed, a
taken port named, and nothing left after stop()."""

from __future__ import annotations

import signal
import socket

import httpx
import pytest

from event_ingest.devstack.errors import DevError
from event_ingest.devstack.mockfleet import MockFleet
from event_ingest.devstack.procs import alive
from event_ingest.devstack.runtime import Interrupts

from .devproc import SOURCES, free_port_base


def fleet_on(tmp_path, base: int) -> tuple[MockFleet, list[str]]:
    said: list[str] = []
    urls = {name: f"http://127.0.0.1:{base + i}/events" for i, name in enumerate(SOURCES)}
    return MockFleet(urls, base, tmp_path, Interrupts(), said.append), said


@pytest.mark.slow
def test_the_fleet_serves_notices_a_death_and_stops(tmp_path):
    fleet, said = fleet_on(tmp_path, free_port_base())
    try:
        fleet.start()
        assert [c.name for c in fleet.children] == SOURCES and fleet.first_dead() is None
        for child, batch in zip(fleet.children, (3, 2, 4)):
            assert child.extra == {"events_per_response": batch, "error_rate": 0.2}
            assert child.log_path == tmp_path / f"mock-{child.name}.log"
            for _ in range(50):  # 20% of answers are injected 500s
                r = httpx.get(child.url or "", params={"lastId": 10}, timeout=5)
                if r.status_code == 200:
                    break
            assert [e["id"] for e in r.json()["events"]] == list(range(11, 11 + batch))

        victim = fleet.children[1]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        assert fleet.first_dead() == ("mock source source2", -signal.SIGKILL, victim.log_path)
    finally:
        assert fleet.stop()
    assert not any(alive(c.pid) for c in fleet.children)
    assert said == ["starting mock sources..."]


@pytest.mark.slow
def test_a_taken_port_is_named(tmp_path):
    base = free_port_base()
    fleet, _ = fleet_on(tmp_path, base)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 2))
        taken.listen()
        try:
            with pytest.raises(DevError) as err:
                fleet.start()
        finally:
            fleet.stop()
    message = str(err.value)
    assert f"port {base + 2} on 127.0.0.1 is already in use (needed for mock source source3)" in message
    assert "--sources-port-base" in message and "\n" not in message
