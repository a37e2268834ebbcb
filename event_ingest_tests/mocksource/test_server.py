"""Mock source server, exercised over real HTTP on free ports."""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from event_ingest.mocksource import (
    ONESHOT_KINDS,
    MockSource,
    MockSourceConfig,
    add_arguments,
    config_from_args,
)

StartSource = Callable[..., MockSource]


@pytest.fixture
def start_source() -> Iterator[StartSource]:
    """Start MockSources from config kwargs; all are stopped at teardown."""
    started: list[MockSource] = []

    def start(**kwargs: Any) -> MockSource:
        source = MockSource(MockSourceConfig(**kwargs)).start()
        started.append(source)
        return source

    yield start
    for source in started:
        source.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def ids_of(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [e["id"] for e in response.json()["events"]]


def control(client: httpx.Client, source: MockSource, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"{source.base_url}/control", json=body)


def stats(client: httpx.Client, source: MockSource, ids: bool = False) -> dict[str, Any]:
    r = client.get(f"{source.base_url}/stats", params={"ids": "1"} if ids else None)
    assert r.status_code == 200
    return r.json()


# ---- modes -------------------------------------------------------------------


def test_backlog_paging(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(name="alpha", backlog=25)
    assert src.url == f"http://127.0.0.1:{src.port}/events"

    assert ids_of(client.get(src.url, params={"limit": 10})) == list(range(1, 11))
    assert ids_of(client.get(src.url, params={"lastId": 10, "limit": 10})) == list(range(11, 21))
    assert ids_of(client.get(src.url, params={"lastId": 20, "limit": 10})) == list(range(21, 26))
    assert ids_of(client.get(src.url, params={"lastId": 25, "limit": 10})) == []
    assert ids_of(client.get(src.url, params={"lastId": 1000})) == []
    assert ids_of(client.get(src.url)) == list(range(1, 26))  # no limit: up to max_limit

    event = client.get(src.url, params={"lastId": 6, "limit": 1}).json()["events"][0]
    assert event["id"] == 7
    assert event["payload"]["source"] == "alpha"
    assert event["payload"]["seq"] == 7
    assert abs(event["payload"]["created_at"] - time.time()) < 60


def test_limit_is_capped_at_max_limit(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=50, max_limit=20)
    assert ids_of(client.get(src.url, params={"limit": 10_000})) == list(range(1, 21))


def test_responses_use_keep_alive_and_content_length(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=3)
    r = client.get(src.url)
    assert r.http_version == "HTTP/1.1"
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers.get("connection", "").lower() != "close"


def test_live_producer_grows(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(name="live", backlog=2, rate=50)
    deadline = time.monotonic() + 5
    seen: list[int] = []
    while time.monotonic() < deadline and len(seen) < 12:
        seen += ids_of(client.get(src.url, params={"lastId": seen[-1] if seen else 0}))
        time.sleep(0.05)
    assert seen[:12] == list(range(1, 13))  # consecutive ids across backlog and live
    last = client.get(src.url, params={"lastId": 2, "limit": 1}).json()["events"][0]
    assert last["payload"] == {"created_at": pytest.approx(time.time(), abs=10), "source": "live", "seq": 3}
    assert stats(client, src)["produced_max_id"] >= 12


def test_seed_mode_returns_exactly_k_whatever_limit(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(seed_batch=3)
    assert ids_of(client.get(src.url)) == [1, 2, 3]
    assert ids_of(client.get(src.url, params={"lastId": 0, "limit": 1})) == [1, 2, 3]
    assert ids_of(client.get(src.url, params={"lastId": 100, "limit": 1000})) == [101, 102, 103]
    st = stats(client, src, ids=True)
    assert st["served_ids"] == [1, 2, 3, 101, 102, 103]
    assert st["produced_max_id"] is None


def test_seed_mode_refuses_backlog() -> None:
    with pytest.raises(ValueError, match="seed_batch"):
        MockSource(MockSourceConfig(seed_batch=2, backlog=5))


# ---- random faults -------------------------------------------------------------


def test_error_rate_one_gives_500(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=5, error_rate=1.0)
    for _ in range(3):
        r = client.get(src.url)
        assert r.status_code == 500
        assert "error" in r.json()
    st = stats(client, src)
    assert st["statuses"] == {"500": 3}
    assert st["faults"] == {"error": 3}
    assert st["served_ids_count"] == 0


def test_rate_limit_sends_retry_after(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=5, rate_limit_rate=1.0, retry_after_s=7)
    r = client.get(src.url)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"


def test_malformed_body(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=5, malformed_rate=1.0)
    r = client.get(src.url)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    st = stats(client, src)
    assert st["served_ids_count"] == 0  # malformed bodies do not count as served
    assert st["faults"] == {"malformed": 1}


def test_latency_is_added(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=5, latency_ms=300)
    t0 = time.monotonic()
    assert ids_of(client.get(src.url)) == [1, 2, 3, 4, 5]
    assert time.monotonic() - t0 >= 0.25


def test_same_seed_same_fault_sequence(start_source: StartSource, client: httpx.Client) -> None:
    def statuses(src: MockSource) -> list[int]:
        return [client.get(src.url).status_code for _ in range(20)]

    a = statuses(start_source(backlog=1, error_rate=0.5, random_seed=42))
    b = statuses(start_source(backlog=1, error_rate=0.5, random_seed=42))
    assert a == b
    assert set(a) == {200, 500}


# ---- /control ----------------------------------------------------------------


def test_control_changes_faults_at_runtime(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=5)
    assert client.get(src.url).status_code == 200

    r = control(client, src, {"error_rate": 1})
    assert r.status_code == 200
    assert r.json()["settings"]["error_rate"] == 1.0
    assert client.get(src.url).status_code == 500

    control(client, src, {"error_rate": 0, "rate_limit_rate": 1, "retry_after_s": 3})
    r = client.get(src.url)
    assert (r.status_code, r.headers["retry-after"]) == (429, "3")

    assert control(client, src, {"reset": True}).json()["settings"]["rate_limit_rate"] == 0
    assert client.get(src.url).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"error_rate": 2},
        {"error_rate": 0.6, "malformed_rate": 0.6},  # fractions must fit in [0, 1]
        {"latency_ms": -1},
        {"bogus": 1},
        {"next": [{"kind": "nope"}]},
        {"next": [{"kind": "status"}]},  # status is required
        {"next": [{"kind": "status", "status": 500, "typo": 1}]},
        {"next": [{"kind": "body", "body_b64": "!!!"}]},
    ],
)
def test_control_rejects_bad_input_and_changes_nothing(
    start_source: StartSource, client: httpx.Client, body: dict[str, Any]
) -> None:
    src = start_source(backlog=5)
    r = control(client, src, body)
    assert r.status_code == 400
    assert "error" in r.json()
    assert client.get(f"{src.base_url}/control").json()["queued"] == []
    assert client.get(src.url).status_code == 200


def test_control_rejects_non_json(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=1)
    r = client.post(f"{src.base_url}/control", content=b"{nope")
    assert r.status_code == 400


# ---- one-shot responses --------------------------------------------------------


def test_oneshots_are_served_in_order_then_normal(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=3)
    control(
        client,
        src,
        {
            "next": [
                {"kind": "status", "status": 503, "headers": {"Retry-After": "2"}},
                {"kind": "status", "status": 418, "body": "teapot", "headers": {"Content-Type": "text/plain"}},
            ]
        },
    )
    r = client.get(src.url)
    assert (r.status_code, r.headers["retry-after"]) == (503, "2")
    assert "error" in r.json()
    r = client.get(src.url)
    assert (r.status_code, r.text, r.headers["content-type"]) == (418, "teapot", "text/plain")
    assert ids_of(client.get(src.url)) == [1, 2, 3]
    st = stats(client, src)
    assert st["faults"] == {"status": 2}
    assert st["statuses"] == {"200": 1, "418": 1, "503": 1}


def test_oneshot_body_raw_and_gzip(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=3)
    gz = gzip.compress(b'{"events": [{"id": 9, "payload": null}]}')
    control(
        client,
        src,
        {
            "next": [
                {"kind": "body", "body": '{"events": [', "content_type": "text/html"},
                {"kind": "body", "body_b64": base64.b64encode(gz).decode(), "content_encoding": "gzip"},
            ]
        },
    )
    r = client.get(src.url)
    assert (r.status_code, r.content, r.headers["content-type"]) == (200, b'{"events": [', "text/html")
    r = client.get(src.url)
    assert r.headers["content-encoding"] == "gzip"
    assert r.json() == {"events": [{"id": 9, "payload": None}]}
    assert stats(client, src)["served_ids_count"] == 0


def test_oneshot_delay_then_answers_normally(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=3)
    control(client, src, {"next": [{"kind": "delay_then", "delay_ms": 300}]})
    t0 = time.monotonic()
    assert ids_of(client.get(src.url, params={"lastId": 1})) == [2, 3]
    assert time.monotonic() - t0 >= 0.25


def test_oneshot_slow_body_makes_client_time_out(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=3)
    control(client, src, {"next": [{"kind": "slow_body", "interval_ms": 1000, "duration_s": 10}]})
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.get(src.url, timeout=httpx.Timeout(5.0, read=0.3))
    assert time.monotonic() - t0 < 10  # before the body would have ended: the read timeout cut it
    assert ids_of(client.get(src.url)) == [1, 2, 3]  # next request is normal again


def test_oneshot_reset_drops_connection(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=3)
    control(client, src, {"next": [{"kind": "reset"}]})
    with pytest.raises(httpx.TransportError):
        client.get(src.url)
    assert ids_of(client.get(src.url)) == [1, 2, 3]
    assert stats(client, src)["faults"] == {"reset": 1}


def test_oneshot_gzip_bomb(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=3)
    control(client, src, {"next": [{"kind": "gzip_bomb", "size_mb": 8}]})
    with client.stream("GET", src.url) as r:
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip"
        inflated = r.read()  # httpx inflates; num_bytes_downloaded is the wire size
        wire = r.num_bytes_downloaded
    assert wire < 200_000
    assert len(inflated) >= 8 * 1024 * 1024
    assert inflated.startswith(b'{"events": [')


def test_oneshot_redirect(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=3)
    control(client, src, {"next": [{"kind": "redirect", "location": "http://evil.example/events"}]})
    r = client.get(src.url)  # httpx does not follow redirects by default
    assert (r.status_code, r.headers["location"]) == (302, "http://evil.example/events")


def test_oneshot_events_verbatim(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=3)
    hostile = [{"id": "1"}, {"id": True, "payload": 1}, {"id": 2**70}, None, {"id": 5, "payload": {}}]
    control(
        client,
        src,
        {
            "next": [
                {"kind": "events", "events": hostile},
                {"kind": "events", "events": [{"id": 40, "payload": 1}], "record": True},
            ]
        },
    )
    assert client.get(src.url).json() == {"events": hostile}
    assert ids_of(client.get(src.url)) == [40]
    assert stats(client, src, ids=True)["served_ids"] == [40]  # only the record=true one


def test_every_oneshot_kind_is_tested() -> None:
    # Guards this file: a new kind must come with a test above.
    assert set(ONESHOT_KINDS) == {
        "status",
        "body",
        "delay_then",
        "slow_body",
        "reset",
        "gzip_bomb",
        "redirect",
        "events",
    }


# ---- recorder ----------------------------------------------------------------


def test_recorder_gap_math_and_served_ids(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=10)
    client.get(src.url, params={"limit": 3})  # ids 1-3
    time.sleep(0.3)
    client.get(src.url, params={"lastId": 3, "limit": 3})  # ids 4-6
    time.sleep(0.3)
    client.get(src.url, params={"lastId": 3, "limit": 2})  # ids 4-5 again
    client.get(src.url, params={"lastId": "x"})  # 400, still a request
    client.get(f"{src.base_url}/health")  # not a request

    st = stats(client, src, ids=True)
    assert st["requests"] == 4
    assert st["gaps_under_200ms"] == 1  # only the last, immediate one
    assert st["min_gap_ms"] < 200
    assert 290 <= st["median_gap_ms"] < 2000  # gaps ~[0, 300, 300]
    assert st["statuses"] == {"200": 3, "400": 1}
    assert st["served_ids"] == [1, 2, 3, 4, 5, 6]
    assert (st["served_ids_count"], st["served_max_id"]) == (6, 6)

    assert client.post(f"{src.base_url}/stats/reset").status_code == 200
    st = stats(client, src)
    assert (st["requests"], st["min_gap_ms"], st["median_gap_ms"]) == (0, None, None)
    assert (st["served_ids_count"], st["served_max_id"]) == (0, None)
    assert "served_ids" not in st


def test_recorder_polite_client_has_no_short_gaps(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(backlog=10, min_interval_ms=100)
    for _ in range(3):
        client.get(src.url)
        time.sleep(0.15)
    st = stats(client, src)
    assert st["requests"] == 3
    assert st["min_gap_ms"] >= 150
    assert st["gaps_under_200ms"] == 0
    assert st["min_interval_ms"] == 100


def test_arrival_is_stamped_before_latency(start_source: StartSource, client: httpx.Client) -> None:
    # Two clients hitting a slow source at once: arrivals are ~simultaneous even
    # though the answers come 300 ms later, so the gap must be judged tiny.
    src = start_source(backlog=2, latency_ms=300)
    threads = [threading.Thread(target=lambda: httpx.get(src.url, timeout=5)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = stats(client, src)
    assert st["requests"] == 2
    assert st["min_gap_ms"] < 200
    assert st["gaps_under_200ms"] == 1


def test_health_is_not_counted(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source(name="beta")
    for _ in range(3):
        r = client.get(f"{src.base_url}/health")
        assert r.json() == {"ok": True, "name": "beta"}
    assert stats(client, src)["requests"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"lastId": "abc"},
        {"lastId": "-1"},
        {"lastId": "1.5"},
        {"lastId": ""},
        {"lastId": "+5"},
        {"limit": "x"},
        {"limit": "0"},
        {"lastId": "99999999999999999999"},
    ],
)
def test_bad_cursor_is_400(start_source: StartSource, client: httpx.Client, params: dict[str, str]) -> None:
    src = start_source(backlog=5)
    r = client.get(src.url, params=params)
    assert r.status_code == 400
    assert "error" in r.json()


def test_unknown_path_is_404(start_source: StartSource, client: httpx.Client) -> None:
    src = start_source()
    assert client.get(f"{src.base_url}/nope").status_code == 404
    assert stats(client, src)["requests"] == 0


# ---- CLI -----------------------------------------------------------------------


def test_cli_arguments_map_to_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--name",
            "s1",
            "--port",
            "0",
            "--backlog",
            "10",
            "--rate",
            "2.5",
            "--error-rate",
            "0.1",
            "--latency-ms",
            "20",
            "--rate-limit-rate",
            "0.2",
            "--retry-after",
            "3",
            "--malformed-rate",
            "0.05",
            "--random-seed",
            "7",
        ]
    )
    config = config_from_args(args)
    assert config == MockSourceConfig(
        name="s1",
        port=0,
        backlog=10,
        rate=2.5,
        error_rate=0.1,
        latency_ms=20,
        rate_limit_rate=0.2,
        retry_after_s=3,
        malformed_rate=0.05,
        random_seed=7,
    )
    seed = config_from_args(parser.parse_args(["--name", "s2", "--port", "0", "--seed-batch", "4"]))
    assert seed.seed_batch == 4


def test_cli_process_serves_and_exits_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "event_ingest.mocksource", "--name", "cli", "--port", "0", "--seed-batch", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("mock source cli listening on http://127.0.0.1:")
        url = line.split(" listening on ", 1)[1].split(" ", 1)[0]
        assert ids_of(httpx.get(url, params={"lastId": 5}, timeout=5)) == [6, 7]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_https_and_the_request_headers_it_saw(start_source: StartSource, tls_files) -> None:
    source = start_source(backlog=3, tls_cert_file=str(tls_files.cert_file), tls_key_file=str(tls_files.key_file))
    assert source.url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(tls_files.ca_file))
    with httpx.Client(verify=trusting, timeout=5.0) as tls_client:
        assert ids_of(tls_client.get(source.url, headers={"X-Probe": "1"})) == [1, 2, 3]
        stats = tls_client.get(f"{source.base_url}/stats").json()
    assert stats["last_request_headers"]["X-Probe"] == "1"
    # A client that does not trust the certificate gets no response, and the source keeps serving.
    with httpx.Client(timeout=5.0) as untrusting, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY"):
        untrusting.get(source.url)
    with httpx.Client(verify=trusting, timeout=5.0) as tls_client:
        assert ids_of(tls_client.get(source.url)) == [1, 2, 3]
    with pytest.raises(ValueError, match="go together"):
        MockSourceConfig(tls_cert_file=str(tls_files.cert_file)).validate()
