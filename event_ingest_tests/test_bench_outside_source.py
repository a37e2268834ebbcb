"""The outside source (event_ingest/bench/outside_source.py): K live sources in one process, every request's
arrival stamped by the kernel beside the loop's own stamp.

Real HTTP on loopback throughout. Assertions on stamps are about order (a stamp before or after a moment the
test marked), never about how long anything took.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from event_ingest.bench.outside import OutsideFleet
from event_ingest.bench.outside_source import LiveSource, OutsideSources
from event_ingest.core.page import parse_page

LINUX = sys.platform.startswith("linux")


def wait_for_head(base: str, at_least: int) -> None:
    while httpx.get(base + "/stats", timeout=5).json()["head_id"] < at_least:
        time.sleep(0.02)


def arrivals(base: str) -> list[list]:
    return httpx.get(base + "/stats?arrivals=1", timeout=5).json()["arrivals"]


def until_the_kernel_stamps(base: str) -> None:
    """Linux turns receive stamping on a moment after the first socket asks for it (a deferred switch):
    ask a source of the same process until one of its requests carries the kernel's stamp."""
    for _ in range(500):
        httpx.get(base + "/events?lastId=0&limit=1", timeout=5)
        if arrivals(base)[-1][0] is not None:
            return
    raise AssertionError(f"no kernel receive stamp on {base} after 500 requests")


def test_each_source_serves_live_ids_in_order_carrying_their_creation_time():
    with OutsideSources(["a", "b"], rate=200.0) as server:
        a = f"http://127.0.0.1:{server.ports['a']}"
        assert server.ports["a"] != server.ports["b"]  # one port per source, as separate hosts
        wait_for_head(a, 12)
        with httpx.Client() as client:
            first = client.get(a + "/events", params={"lastId": 0, "limit": 5})
            second = client.get(a + "/events", params={"lastId": 5, "limit": 5})
        asked_by = time.time()
        stats = httpx.get(a + "/stats", timeout=5).json()
    events = first.json()["events"] + second.json()["events"]
    assert [e["id"] for e in events] == list(range(1, 11))
    for event in events:
        assert event["payload"]["created_at"] == stats["started"] + event["id"] / 200.0
        assert event["payload"]["created_at"] <= asked_by  # served only once it exists
        assert event["payload"]["source"] == "a"
    # The project's own page parser takes every event and quarantines none: the protocol is the one it speaks.
    page = parse_page(first.content, cursor=0, max_payload_bytes=10_000)
    assert [e.id for e in page.events] == [1, 2, 3, 4, 5] and not page.quarantined
    assert stats["served"] == [[1, 10]]
    assert stats["requests"] == 2


def test_ids_served_are_kept_as_exact_ranges():
    source = LiveSource("s", rate=1.0, started=time.time() - 1000)  # ids 1..1000 exist
    for last_id, limit in ((0, 5), (5, 5), (2, 2), (19, 6), (10, 3)):
        source.page(last_id, limit, time.time())
    assert source.served == [[1, 13], [20, 25]]
    assert source.page(1000, 5, time.time()) == []  # nothing new: an empty page, nothing served
    assert source.served == [[1, 13], [20, 25]]


def test_other_sources_in_the_process_see_none_of_a_sources_requests():
    with OutsideSources(["a", "b"], rate=50.0) as server:
        a, b = (f"http://127.0.0.1:{server.ports[n]}" for n in ("a", "b"))
        httpx.get(a + "/events", timeout=5)
        assert len(arrivals(a)) == 1
        assert arrivals(b) == []  # /stats and /health are the harness's requests, not the consumer's


def test_a_bad_query_is_refused_in_one_line_naming_the_parameter_and_the_source_and_still_counted():
    with OutsideSources(["s7"], rate=50.0) as server:
        base = f"http://127.0.0.1:{server.ports['s7']}"
        bad = httpx.get(base + "/events?lastId=abc", timeout=5)
        too_big = httpx.get(base + "/events?limit=100001", timeout=5)
        posted = httpx.post(base + "/events", content=b"{}", timeout=5)
        missing = httpx.get(base + "/nowhere", timeout=5)
        assert (bad.status_code, too_big.status_code, posted.status_code, missing.status_code) == (400, 400, 405, 404)
        assert bad.json() == {"error": "lastId must be an integer >= 0, got 'abc' (GET /events of source s7)"}
        assert "limit must be an integer >= 1 and <= 100000, got '100001'" in too_big.json()["error"]
        assert "\n" not in bad.text
        # Refused requests reached the source all the same: the 200 ms rule counts them.
        assert len(arrivals(base)) == 3


@pytest.mark.skipif(not LINUX, reason="kernel receive timestamps are Linux's")
def test_a_request_split_over_two_reads_arrives_with_its_first_bytes():
    with OutsideSources(["s", "warm"], rate=50.0) as server:
        base = f"http://127.0.0.1:{server.ports['s']}"
        until_the_kernel_stamps(f"http://127.0.0.1:{server.ports['warm']}")
        with socket.create_connection(("127.0.0.1", server.ports["s"]), timeout=10) as sock:
            sock.sendall(b"GET /events?lastId=0&limit=1 HTTP/1.1\r\nHost: x\r\n")
            between = time.time()  # the first bytes are in the server's socket before this moment
            # Time for the server to read them alone (a read that returned both pieces would carry the
            # kernel's stamp of the later one: the stamp of a read is that of the last segment it took).
            time.sleep(0.3)
            sock.sendall(b"\r\n")
            reply = sock.recv(65536)
        (kernel, loop), *_ = arrivals(base)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert kernel <= between
    assert kernel <= loop


def test_pipelined_requests_are_each_answered_and_each_counted():
    with OutsideSources(["s"], rate=500.0) as server:
        base = f"http://127.0.0.1:{server.ports['s']}"
        wait_for_head(base, 3)
        with socket.create_connection(("127.0.0.1", server.ports["s"]), timeout=10) as sock:
            sock.sendall(
                b"GET /events?lastId=0&limit=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /events?lastId=1&limit=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        stamps = arrivals(base)
    assert reply.count(b"HTTP/1.1 200 OK") == 2
    assert b'"id":1,' in reply and b'"id":2,' in reply
    assert len(stamps) == 2
    assert stamps[0][0] == stamps[1][0]  # one read brought both: the second gets that read's stamp


@pytest.mark.skipif(not LINUX, reason="kernel receive timestamps are Linux's")
def test_in_its_own_process_a_request_sent_while_the_server_is_stopped_keeps_its_kernel_arrival():
    # The case the kernel stamp exists for: the server cannot run (here SIGSTOP; under load, no free CPU)
    # when the request reaches it. The kernel stamp says when it arrived, the loop's when it was read.
    proc = subprocess.Popen(
        [sys.executable, "-m", "event_ingest.bench.outside_source", "--rate", "50", "x", "y"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["kernel_stamped"] is True and set(ready["ports"]) == {"x", "y"}
        base = f"http://127.0.0.1:{ready['ports']['x']}"
        assert httpx.get(base + "/health", timeout=10).json() == {"ok": True, "source": "x"}
        until_the_kernel_stamps(f"http://127.0.0.1:{ready['ports']['y']}")
        os.kill(proc.pid, signal.SIGSTOP)
        sent: dict = {}

        def ask() -> None:
            sent["before"] = time.time()
            sent["response"] = httpx.get(base + "/events", params={"lastId": 0, "limit": 1}, timeout=30)

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(0.3)  # the request is in the stopped server's socket by now
        resumed = time.time()
        os.kill(proc.pid, signal.SIGCONT)
        asker.join(30)
        assert sent["response"].status_code == 200
        (kernel, loop), *_ = arrivals(base)
        assert sent["before"] <= kernel < resumed <= loop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0  # a clean stop on SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_process_with_a_name_twice_refuses_to_start_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "event_ingest.bench.outside_source", "a", "a"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "outside source: names must be unique, got ['a', 'a']"


def test_the_bench_fleet_serves_sources_per_process_and_reads_kernel_arrivals_and_served_ids(tmp_path):
    fleet = OutsideFleet(["a", "b", "c"], rate=200.0, workdir=tmp_path, per_process=2)
    fleet.start()
    try:
        assert len(fleet.pids) == 2  # a and b in one process, c in another
        until_the_kernel_stamps(fleet.base("b"))
        wait_for_head(fleet.base("c"), 8)
        with httpx.Client() as client:
            client.get(fleet.url("c"), params={"lastId": 0, "limit": 3})
            client.get(fleet.url("c"), params={"lastId": 3, "limit": 4})
        stamps = arrivals(fleet.base("c"))
        seen = fleet.observed("c")
        assert fleet.requests("a") == 0
    finally:
        fleet.stop()
    assert fleet.pids == []
    assert seen.served_ids == [1, 2, 3, 4, 5, 6, 7]
    if LINUX:  # the kernel's stamps are the arrivals; the server's own stay beside them
        assert seen.arrivals == [kernel for kernel, _ in stamps] and None not in seen.arrivals
    assert seen.app_stamps == [app for _, app in stamps]
