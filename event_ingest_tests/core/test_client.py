"""The source client against sources that need credentials and TLS: a mock source serving HTTPS
with a CA made for the test session, headers judged where they arrive (the mock's recorder), and
secrets looked for everywhere they could leak."""

from __future__ import annotations

import json
import logging
import ssl

import pytest

from event_ingest.config import Settings, load_sources
from event_ingest.core import Gate, drain
from event_ingest.core.client import SourceClient
from event_ingest.core.progress import DrainStatus

SECRET = "s3cr3t-t0ken-4f9a1c7e"
TOKEN_ENV = "EVENT_INGEST_TEST_SOURCE_TOKEN"


def sources_file(tmp_path, name: str, url: str, extra: str = "") -> list:
    path = tmp_path / "sources.yaml"
    path.write_text(f"sources:\n  - name: {name}\n    url: {url}\n    timeout_s: 2\n    max_attempts: 2\n{extra}")
    return load_sources(path)


def events_in(store, name: str) -> list[int]:
    rows = store.conn.execute("SELECT event_id FROM events WHERE source = %s ORDER BY 1", (name,)).fetchall()
    store.conn.rollback()
    return [r[0] for r in rows]


@pytest.fixture
def https_mock(make_mock, tls_files):
    return make_mock(backlog=30, tls_cert_file=str(tls_files.cert_file), tls_key_file=str(tls_files.key_file))


def test_an_untrusted_certificate_is_one_clear_error_and_not_retried(
    tmp_path, https_mock, tls_files, store, redis_client, source_name, caplog
):
    caplog.set_level(logging.INFO, logger="event_ingest")
    assert https_mock.url.startswith("https://127.0.0.1:")
    [source] = sources_file(tmp_path, source_name, https_mock.url)
    stats = drain(source, store=store, redis_client=redis_client)
    assert stats.status == DrainStatus.SOURCE_ERROR and stats.errors == 1, stats.summary()  # retrying cannot fix it
    assert (
        f"TLS certificate of {https_mock.url} is not trusted by the system certificate store" in stats.error
        and "set ca_file" in stats.error
    ), stats.error
    assert https_mock.stats()["requests"] == 0  # refused in the handshake: no request reached the source
    assert events_in(store, source_name) == []
    lines = [r.getMessage() for r in caplog.records if source_name in r.getMessage()]
    assert len([line for line in lines if "is not trusted" in line]) == 1, lines

    # A CA file that did not sign it is no better, and the error says which file was asked.
    other = f"{source_name}_o"
    [source] = sources_file(tmp_path, other, https_mock.url, f"    ca_file: {tls_files.other_ca_file}\n")
    stats = drain(source, store=store, redis_client=redis_client)
    assert (
        stats.status == DrainStatus.SOURCE_ERROR and f"not trusted by ca_file {tls_files.other_ca_file}" in stats.error
    )


def test_ca_file_is_trusted_and_headers_arrive_at_the_source(
    tmp_path, https_mock, tls_files, store, redis_client, source_name, monkeypatch
):
    monkeypatch.setenv(TOKEN_ENV, f"Bearer {SECRET}")
    # A relative ca_file is read from beside the sources file.
    (tmp_path / "ca.pem").write_bytes(tls_files.ca_file.read_bytes())
    [source] = sources_file(
        tmp_path,
        source_name,
        https_mock.url,
        f"    ca_file: ca.pem\n    headers:\n      Authorization: {{env: {TOKEN_ENV}}}\n      X-Api-Version: '3'\n",
    )
    stats = drain(source, store=store, redis_client=redis_client)
    assert stats.status == DrainStatus.CAUGHT_UP, stats.summary()
    assert events_in(store, source_name) == list(range(1, 31))
    seen = https_mock.stats()["last_request_headers"]
    assert seen["Authorization"] == f"Bearer {SECRET}" and seen["X-Api-Version"] == "3", seen


def test_https_trusts_the_system_store_not_a_bundled_one(
    tmp_path, https_mock, tls_files, store, redis_client, source_name, monkeypatch
):
    """Without ca_file the client trusts what OpenSSL's default locations hold (the system store, which
    SSL_CERT_FILE points elsewhere), the same set as ssl.create_default_context()."""
    [source] = sources_file(tmp_path, source_name, https_mock.url)
    client = SourceClient(source, Gate(redis_client, source_name, interval_s=0.2, hold_s=2.2, token="t"))
    try:
        assert client.tls.cert_store_stats() == ssl.create_default_context().cert_store_stats()
    finally:
        client.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca_file))
    stats = drain(source, store=store, redis_client=redis_client)
    assert stats.status == DrainStatus.CAUGHT_UP and events_in(store, source_name) == list(range(1, 31)), (
        stats.summary()
    )


def test_a_secret_never_shows(tmp_path, make_mock, store, redis_client, source_name, monkeypatch, caplog):
    """The source echoes the token in its error pages; it still appears nowhere we print."""
    caplog.set_level(logging.DEBUG)  # every logger, every level
    monkeypatch.setenv(TOKEN_ENV, f"Bearer {SECRET}")
    mock = make_mock(backlog=5)
    mock.control(
        {
            "next": [
                {"kind": "status", "status": 500, "body": f"upstream refused Authorization: Bearer {SECRET}"},
                {"kind": "status", "status": 401, "body": f"invalid token {SECRET}"},
            ]
        }
    )
    [source] = sources_file(
        tmp_path,
        source_name,
        mock.url,
        f"    headers:\n      Authorization: {{env: {TOKEN_ENV}}}\n      X-Key: {SECRET}x\n",
    )
    stats = drain(source, store=store, redis_client=redis_client)
    assert stats.status == DrainStatus.SOURCE_ERROR and stats.errors == 2, stats.summary()
    assert stats.error.endswith("HTTP 401: invalid token ***"), stats.error
    assert mock.stats()["last_request_headers"]["Authorization"] == f"Bearer {SECRET}"  # it was sent

    settings = Settings(database_url="postgresql://h/db", redis_url="redis://h", sources=[source])
    shown = {
        "logs": caplog.text,
        "stats": json.dumps(stats.to_dict()) + stats.summary(),
        "repr": repr(source) + str(source) + repr(settings),
        "to_dict": json.dumps(source.to_dict()),
    }
    for where, text in shown.items():
        assert SECRET not in text, f"the secret shows in {where}"
    assert source.to_dict()["headers"] == {"Authorization": {"env": TOKEN_ENV}, "X-Key": "***"}
    assert "upstream refused Authorization: ***" in caplog.text  # the line is there, redacted


def test_a_request_is_never_written_after_its_slot_went_stale(make_mock):
    """The send-by check sits where the request's first bytes go to the socket (core/http.py): a request
    whose slot went stale is refused there, on a new connection and on one kept alive, and the source
    sees nothing of it."""
    import time

    import pytest

    from event_ingest.core.http import Connection, SlotWentStale, tls_context
    from event_ingest_tests.conftest import source_config

    mock = make_mock(backlog=5)
    conn = Connection(mock.url, [], tls_context(source_config("s", mock.url)))
    try:
        with pytest.raises(SlotWentStale):
            with conn.get("lastId=0&limit=1", send_by=time.monotonic() - 0.001, deadline=time.monotonic() + 30):
                pass
        assert not conn.guard.written and mock.stats()["requests"] == 0
        later = time.monotonic() + 30
        with conn.get("lastId=0&limit=1", send_by=later, deadline=later) as response:
            assert response.status == 200 and b"".join(response.iter_stream())
        assert conn.guard.written and mock.stats()["requests"] == 1
        with pytest.raises(SlotWentStale):  # the same connection, kept alive
            with conn.get("lastId=1&limit=1", send_by=time.monotonic() - 0.001, deadline=time.monotonic() + 30):
                pass
        assert mock.stats()["requests"] == 1
    finally:
        conn.close()
