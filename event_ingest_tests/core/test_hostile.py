"""Hostile sources: a corpus of bad responses and bad events, each sent over real HTTP by a mock
source, through the real drain, into real Postgres.

Every case queues one-shot responses on a mock source holding events 1..5 (its normal pages
follow), drains it once, and checks the same things:

* the drain's outcome: ``stats.status``, ``stats.errors``, ``stats.quarantined``;
* one log line naming the source and the reason, and no log line that is not one printable line;
* nothing wrong stored: exactly the expected ids, each with the payload it was served with;
* the cursor never passes an event that was neither stored nor quarantined;
* bad bodies and bad items are in ``quarantine`` with their raw bytes and a reason.

The unit-level parse rules are in ``test_page.py``; here the point is the whole path.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import pytest

from event_ingest.core import DrainOptions, Gate, connect_redis, drain
from event_ingest.core.progress import DrainStatus
from event_ingest_tests.conftest import source_config

BACKLOG = 5  # the mock's good events: ids 1..5
TIMEOUT_S = 1.0
INTERVAL_S = 0.2
MAX_EVENT_ID = 2**63 - 1
OPTIONS = DrainOptions(backoff_base_s=0.05, lease_wait_s=1.0)


# ---- the corpus ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    shots: list  # one-shot responses, served before the mock's normal pages
    status: str  # stats.status
    stored: list  # event ids expected in the events table
    log: str  # the reason, as the log line names it
    errors: int = 0  # failed attempts
    # Expected quarantine rows, in order: (reason substring, event_id, the item as served or None).
    quarantined: list = field(default_factory=list)
    raw_body: bytes | None = None  # a quarantined body: the exact bytes served
    payloads: dict = field(default_factory=dict)  # id -> payload, for ids a shot served
    config: dict = field(default_factory=dict)  # source overrides


def body(raw: bytes | str, **spec) -> dict:
    key, value = ("body", raw) if isinstance(raw, str) else ("body_b64", base64.b64encode(raw).decode())
    return {"kind": "body", key: value, **spec}


def page(*items) -> dict:
    return {"kind": "events", "events": list(items), "record": True}


def malformed(raw: bytes | str, reason: str, **spec) -> Case:
    """A 200 whose body is not a page: quarantined whole, retried, then the good page is stored."""
    raw_bytes = raw.encode() if isinstance(raw, str) else raw
    return Case(
        shots=[body(raw, **spec)],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3, 4, 5],
        log=reason,
        errors=1,
        quarantined=[(f"malformed page at lastId=0: {reason}", None, None)],
        raw_body=raw_bytes,
    )


def bad_item(item, reason: str) -> Case:
    """One bad item between two good ones: the good ones are stored, the bad one quarantined."""
    return Case(
        shots=[page({"id": 1, "payload": "a"}, item, {"id": 2, "payload": "b"})],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3, 4, 5],
        log=reason,
        quarantined=[(reason, None, item)],
        payloads={1: "a", 2: "b"},
    )


def unreadable(item: bytes, event_id: int | None, reason: str) -> Case:
    """Item 2 of a page cannot be parsed: items 1 and 3 are stored, the item is quarantined as served.
    With its id readable from the bytes the cursor passes it; without, the page stops before it."""
    raw = b'{"events": [{"id": 1, "payload": "a"}, ' + item + b', {"id": 3, "payload": "c"}]}'
    if event_id is None:
        return Case(
            shots=[body(raw)],
            status=DrainStatus.CAUGHT_UP,
            stored=[1, 2, 3, 4, 5],
            log="has no readable id",
            raw_body=item,
            payloads={1: "a"},
            quarantined=[(reason, None, None)],
        )
    return Case(
        shots=[body(raw)],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 3, 4, 5],
        log=f"event {event_id} cannot be read",
        raw_body=item,
        payloads={1: "a", 3: "c"},
        quarantined=[(reason, event_id, None)],
    )


def retried(shot: dict, reason: str, **overrides) -> Case:
    """A failed attempt that is retried (nothing kept of it), then the good page is stored."""
    return Case(shots=[shot], status=DrainStatus.CAUGHT_UP, stored=[1, 2, 3, 4, 5], log=reason, errors=1, **overrides)


def refused(shot: dict, reason: str) -> Case:
    """An answer retrying cannot fix: the drain stops, nothing stored, the cursor stays."""
    return Case(shots=[shot], status=DrainStatus.SOURCE_ERROR, stored=[], log=reason, errors=1)


DEEP = "[" * 50_000 + "]" * 50_000
BIG_BODY = json.dumps({"events": [{"id": i, "payload": "x" * 20_000} for i in range(1, 6)]})

CASES = {
    # -- bodies that are not a page --------------------------------------------------------
    "non_json_body": malformed("this is not json", "body is not JSON"),
    "html_error_page_with_200": malformed(
        "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>",
        "body is not JSON",
        content_type="text/html",
    ),
    "truncated_json": malformed('{"events": [{"id": 1, "payload"', "body is not JSON"),
    "empty_body": malformed("", "empty body"),
    "events_missing": malformed('{"items": [{"id": 1}]}', "field 'events' is missing"),
    "events_null": malformed('{"events": null}', "field 'events' is null"),
    "events_an_object": malformed('{"events": {"id": 1, "payload": "x"}}', "field 'events' is dict"),
    "events_a_string": malformed('{"events": "1,2,3"}', "field 'events' is str"),
    "top_level_array": malformed('[{"id": 1}]', "top level is list"),
    "invalid_utf8_outside_the_events": malformed(
        b'{"ev\xe9nts": [{"id": 1, "payload": "a"}]}', "body is not valid UTF-8"
    ),
    # Too deep and never closed: no split can be trusted, so the body is refused whole.
    "deeply_nested_and_unbalanced": malformed(
        '{"events": [{"id": 1, "payload": "a"}], "meta": ' + DEEP[:-1] + "}", "JSON nested too deeply"
    ),
    # What the parser refuses lies outside the events: every event is still read.
    "nan_outside_the_events": Case(
        shots=[body('{"events": [{"id": 1, "payload": "a"}, {"id": 2, "payload": "b"}], "next": NaN}')],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3, 4, 5],
        log="page not readable whole",
        payloads={1: "a", 2: "b"},
    ),
    "malformed_every_time": Case(
        shots=[body("<html>down</html>"), body("<html>down</html>")],
        status=DrainStatus.SOURCE_ERROR,
        stored=[],
        log="2 attempts failed",
        errors=2,
        quarantined=[("malformed page at lastId=0: body is not JSON", None, None)],
        raw_body=b"<html>down</html>",
    ),
    # -- items that are not events ----------------------------------------------------------
    "event_not_an_object": Case(
        shots=[page({"id": 1}, "just a string", 42, None, [3, 4], {"id": 2})],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3, 4, 5],
        log="event is str, not an object",
        payloads={1: None, 2: None},
        quarantined=[
            ("event is str, not an object", None, "just a string"),
            ("event is int, not an object", None, 42),
            ("event is NoneType, not an object", None, None),
            ("event is list, not an object", None, [3, 4]),
        ],
    ),
    "id_missing": bad_item({"payload": "no id"}, "id is missing"),
    "id_null": bad_item({"id": None, "payload": "x"}, "id is null"),
    "id_a_string": bad_item({"id": "3", "payload": "x"}, "id is not an integer (str)"),
    "id_a_float": bad_item({"id": 3.0, "payload": "x"}, "id is not an integer (float)"),
    "id_negative": bad_item({"id": -3, "payload": "x"}, "id -3 is not positive"),
    "id_zero": bad_item({"id": 0, "payload": "x"}, "id 0 is not positive"),
    "id_beyond_64_bits": bad_item({"id": 2**64 + 3, "payload": "x"}, "id does not fit in 64 bits"),
    "id_just_past_bigint": bad_item({"id": MAX_EVENT_ID + 1, "payload": "x"}, "id does not fit in 64 bits"),
    "id_a_boolean": bad_item({"id": True, "payload": "x"}, "id is not an integer (bool)"),
    # -- ids that are integers but out of order -----------------------------------------------
    "duplicate_ids_in_a_page": Case(
        shots=[page({"id": 1, "payload": "first"}, {"id": 1, "payload": "second"}, {"id": 2, "payload": "b"})],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3, 4, 5],
        log="duplicate id 1 within one page",
        quarantined=[("duplicate id 1 within one page", 1, {"id": 1, "payload": "second"})],
        payloads={1: "first", 2: "b"},
    ),
    "ids_not_ascending": Case(
        shots=[page({"id": 3, "payload": "c"}, {"id": 1, "payload": "a"}, {"id": 2, "payload": "b"})],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3, 4, 5],
        log="ids not ascending",
        payloads={1: "a", 2: "b", 3: "c"},
    ),
    "ids_at_or_below_the_cursor": Case(
        shots=[
            page({"id": 1, "payload": "a"}, {"id": 2, "payload": "b"}, {"id": 3, "payload": "c"}),
            page({"id": 2, "payload": "CHANGED"}, {"id": 3, "payload": "CHANGED"}, {"id": 4, "payload": "d"}),
        ],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3, 4, 5],
        log="at or below the cursor 3",
        payloads={1: "a", 2: "b", 3: "c", 4: "d"},  # the first copy stays; a re-sent one changes nothing
    ),
    "stale_page_entirely_below_the_cursor": Case(
        shots=[
            page({"id": 1, "payload": "a"}, {"id": 2, "payload": "b"}, {"id": 3, "payload": "c"}),
            page({"id": 1, "payload": "OLD"}, {"id": 2, "payload": "OLD"}),
        ],
        # Nothing above the cursor: nothing new, so the drain ends (asking again would get the same page
        # until the budget ran out); 4 and 5 come with the next drain.
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3],
        log="2 ids at or below the cursor 3",
        payloads={1: "a", 2: "b", 3: "c"},  # and the cursor did not move back
    ),
    # -- payloads ---------------------------------------------------------------------------
    "payload_missing": Case(
        shots=[page({"id": 1}, {"id": 2, "payload": None})],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3, 4, 5],
        log="",
        payloads={1: None, 2: None},  # stored as JSON null, not dropped
    ),
    "payload_over_the_cap": Case(
        shots=[page({"id": 1, "payload": "x" * 5000}, {"id": 2, "payload": "ok"})],
        status=DrainStatus.CAUGHT_UP,
        stored=[2, 3, 4, 5],
        log="over the 1024-byte cap",
        payloads={2: "ok"},
        quarantined=[("payload is 5002 bytes, over the 1024-byte cap", 1, {"id": 1, "payload": "x" * 5000})],
        config={"max_payload_bytes": 1024},
    ),
    # -- one item the JSON parser refuses: the page is read item by item (salvage) ---------------
    # 1e400 is valid JSON but reads as float('inf'), which jsonb refuses: it must not sink the page.
    "payload_number_out_of_float_range": unreadable(
        b'{"id": 2, "payload": {"n": 1e400}}', 2, "item is not JSON (number 1e400 is out of range)"
    ),
    "item_nested_too_deeply": unreadable(b'{"id": 2, "payload": ' + DEEP.encode() + b"}", 2, "JSON nested too deeply"),
    "item_not_utf8": unreadable(b'{"id": 2, "payload": "caf\xe9"}', 2, "item is not valid UTF-8 (byte 25)"),
    "item_with_nan_literal": unreadable(b'{"payload": NaN, "id": 2}', 2, "item is not JSON (NaN is not valid JSON)"),
    "item_with_an_invalid_escape": unreadable(
        b'{"id": 2, "payload": "C:\\dir\\x\\q \\"\\x"}', 2, "item is not JSON (Invalid \\escape"
    ),
    "item_with_a_5000_digit_integer": unreadable(
        b'{"id": 2, "payload": {"n": ' + b"9" * 5000 + b"}}",
        2,
        "item is not JSON (an integer has more than 4300 digits)",
    ),
    # The id itself cannot be read: the cursor stops before the item, so nothing after it is skipped
    # unseen (event 2 is fetched again and comes with the mock's own payload, not "b").
    "id_1e400": unreadable(b'{"id": 1e400, "payload": "x"}', None, "number 1e400 is out of range"),
    "id_of_5000_digits": unreadable(
        b'{"id": 1' + b"0" * 5000 + b', "payload": "x"}', None, "an integer has more than 4300 digits"
    ),
    "id_only_inside_the_payload": unreadable(b'{"payload": {"id": 2}, "v": NaN}', None, "NaN is not valid JSON"),
    # Stuck: the first item of the page at the cursor cannot be read, nor its id. Nothing moves and nothing
    # after it is taken; the drain ends stuck, not ok (asking again would get the same page; good pages may
    # wait behind it) and says how to move on.
    "stuck_on_an_item_without_a_readable_id": Case(
        shots=[body(b'{"events": [{"id": 1' + b"0" * 5000 + b'}, {"id": 2, "payload": "b"}]}')],
        status=DrainStatus.STUCK,
        stored=[],
        log="`event-ingest skip` moves past it",
        raw_body=b'{"id": 1' + b"0" * 5000 + b"}",
        quarantined=[
            (
                "event cannot be read: item is not JSON (an integer has more than 4300 digits); nor can its "
                "id, so the cursor stops before it",
                None,
                None,
            )
        ],
    ),
    "payload_with_nul": Case(
        shots=[body('{"events": [{"id": 1, "payload": "a\\u0000b"}, {"id": 2, "payload": "ok"}]}')],
        status=DrainStatus.CAUGHT_UP,
        stored=[2, 3, 4, 5],
        log="NUL character",
        payloads={2: "ok"},
        quarantined=[("NUL character", 1, {"id": 1, "payload": "a\x00b"})],
    ),
    "payload_with_lone_surrogate": Case(
        shots=[body('{"events": [{"id": 1, "payload": "\\ud800"}, {"id": 2, "payload": "ok"}]}')],
        status=DrainStatus.CAUGHT_UP,
        stored=[2, 3, 4, 5],
        log="unpaired surrogate",
        payloads={2: "ok"},
        quarantined=[("unpaired surrogate", 1, {"id": 1, "payload": "\ud800"})],
    ),
    # Text that merely looks like the NUL escape (a backslash, then "u0000") is fine for jsonb: stored as is.
    "payload_with_escaped_backslash_u0000": Case(
        shots=[page({"id": 1, "payload": "C:\\u0000\\dir"}, {"id": 2, "payload": {"k\\u0000": "\\\\u0000"}})],
        status=DrainStatus.CAUGHT_UP,
        stored=[1, 2, 3, 4, 5],
        log="",
        payloads={1: "C:\\u0000\\dir", 2: {"k\\u0000": "\\\\u0000"}},
    ),
    # -- the HTTP layer -----------------------------------------------------------------------
    "response_over_max_response_bytes": retried(
        body(BIG_BODY),
        "response body over the 65536-byte cap",
        config={"max_response_bytes": 65536},
    ),
    "slowloris_body": retried(
        {"kind": "slow_body", "content_length": 1_000_000, "interval_ms": 50, "duration_s": 30},
        "timeout: response not complete within 1s",
    ),
    # Each byte comes within the read timeout, so only the total deadline can end it.
    "slowloris_under_the_read_timeout": retried(
        {"kind": "slow_body", "content_length": 1_000_000, "interval_ms": 600, "duration_s": 30},
        "timeout: response not complete within 1s",
    ),
    "headers_never_come": retried({"kind": "delay_then", "delay_ms": 5000}, "timeout: no response began within 1s"),
    "gzip_bomb": retried(
        {"kind": "gzip_bomb", "size_mb": 64},
        "response body over the 1048576-byte cap",
        config={"max_response_bytes": 1 << 20},
    ),
    "corrupt_gzip": retried(body("definitely not gzip", content_encoding="gzip"), "body cannot be decoded"),
    "content_length_lies": retried(
        body('{"events": [{"id": 1}', headers={"Content-Length": "5000"}),
        "peer closed connection",
    ),
    "connection_reset": retried({"kind": "reset"}, "connection error"),
    "redirect_to_another_host": refused(
        {"kind": "redirect", "location": "{elsewhere}"},
        "redirect to 'http://127.0.0.2:",
    ),
    "http_204": refused({"kind": "status", "status": 204}, "HTTP 204"),
    "http_301": refused(
        {"kind": "redirect", "status": 301, "location": "/v2/events"}, "HTTP 301 redirect to '/v2/events' not followed"
    ),
    "http_404": refused({"kind": "status", "status": 404}, 'HTTP 404: {"error": "injected status 404"}'),
    # An error page that tries to forge log lines or colour the terminal gets one plain line.
    "http_404_with_control_characters": refused(
        {"kind": "status", "status": 404, "body": "gone\r\nsource x: caught_up\x1b[2J\x1b[31m\x00"},
        "HTTP 404: gone",
    ),
    "http_429_without_retry_after": retried({"kind": "status", "status": 429}, "HTTP 429 (no Retry-After)"),
    "http_503_with_retry_after": retried(
        {"kind": "status", "status": 503, "headers": {"Retry-After": "1"}},
        "HTTP 503 (Retry-After 1s)",
    ),
    "http_500_every_time": Case(
        shots=[{"kind": "status", "status": 500}, {"kind": "status", "status": 500}],
        status=DrainStatus.SOURCE_ERROR,
        stored=[],
        log="2 attempts failed, last: HTTP 500",
        errors=2,
    ),
}


# ---- fixtures and checks ------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_name(redis_url):
    """Hands out source names whose spacing gate has already waited out its cold start.

    A brand-new gate waits one full hold (timeout + interval) by design; paying it once for
    all the names of this module, instead of once per case, keeps the module fast.
    """
    client = connect_redis(redis_url)
    hold_s = TIMEOUT_S + INTERVAL_S
    names = [f"h_{uuid.uuid4().hex[:12]}" for _ in range(len(CASES) + 20)]
    for name in names:
        Gate(client, name, interval_s=INTERVAL_S, hold_s=hold_s, token="warm-up").try_acquire()
    time.sleep(hold_s + 0.05)
    client.close()
    pool = iter(names)
    return lambda: next(pool)


def hostile_source(name: str, url: str, **overrides):
    overrides = {"timeout_s": TIMEOUT_S, "max_attempts": 2, "max_run_seconds": 10.0, **overrides}
    return source_config(name, url, **overrides)


def query(store, sql: str, *params) -> list[tuple]:
    rows = store.conn.execute(sql, params).fetchall()
    store.conn.rollback()
    return rows


def log_lines(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("event_ingest")]
    for line in lines:
        # One line each: a hostile body must not forge log lines or send terminal escapes.
        assert line.isprintable(), f"log line is not one printable line: {line!r}"
    return lines


def check_outcome(case: Case, stats, store, mock, caplog, name: str) -> None:
    assert stats.status == case.status, stats.summary()
    assert stats.errors == case.errors, stats.summary()
    # How long it took is not judged here (a busy machine stalls; timing goals are the benchmark's): that a
    # slow answer was cut by the client's own deadline shows in the reason logged, checked below.

    # Nothing wrong stored: exactly the expected ids, each with the payload it was served with.
    events = query(
        store, "SELECT event_id, payload, jsonb_typeof(payload) FROM events WHERE source = %s ORDER BY event_id", name
    )
    assert [e[0] for e in events] == case.stored
    for event_id, payload, json_type in events:
        assert json_type is not None, f"event {event_id}: payload is SQL NULL, not JSON"
        if event_id in case.payloads:
            assert payload == case.payloads[event_id], event_id
        else:
            assert payload["seq"] == event_id and payload["source"] == mock.name, (event_id, payload)

    # Bad bodies and items: kept with their raw bytes and a reason.
    rows = query(store, "SELECT event_id, raw, reason, seen_count FROM quarantine WHERE source = %s ORDER BY id", name)
    assert len(rows) == len(case.quarantined), rows
    for (event_id, raw, reason, _), (want_reason, want_id, want_item) in zip(rows, case.quarantined):
        assert want_reason in reason and event_id == want_id, (reason, event_id)
        if case.raw_body is not None:
            assert bytes(raw) == case.raw_body  # the exact bytes served (an empty body is b"")
        else:
            assert json.loads(bytes(raw)) == want_item
    assert stats.quarantined == sum(r[3] for r in rows)

    # The cursor is the highest accounted-for id and never passes an id that is neither stored nor quarantined.
    ((cursor,),) = query(store, "SELECT cursor FROM source_state WHERE source = %s", name)
    accounted = {e[0] for e in events} | {r[0] for r in rows if r[0] is not None}
    assert cursor == max(accounted, default=0) == stats.cursor_after
    served = mock.stats(include_ids=True)["served_ids"]
    unaccounted = [i for i in served if 0 < i <= min(cursor, MAX_EVENT_ID) and i not in accounted]
    assert not unaccounted, f"cursor {cursor} passed ids neither stored nor quarantined: {unaccounted}"

    # One clear line names the source and the reason.
    lines = log_lines(caplog)
    assert any(name in line and case.log in line for line in lines), lines


@pytest.mark.parametrize("case", [pytest.param(c, id=k) for k, c in CASES.items()])
def test_hostile_response(case: Case, make_mock, store, redis_client, warm_name, caplog):
    caplog.set_level(logging.INFO, logger="event_ingest")
    name = warm_name()
    mock = make_mock(backlog=BACKLOG)
    shots = json.dumps(case.shots)
    elsewhere = None
    if "{elsewhere}" in shots:
        elsewhere = make_mock(backlog=BACKLOG, host="127.0.0.2")
        shots = shots.replace("{elsewhere}", elsewhere.url)
    mock.control({"next": json.loads(shots)})

    stats = drain(
        hostile_source(name, mock.url, **case.config), store=store, redis_client=redis_client, options=OPTIONS
    )

    check_outcome(case, stats, store, mock, caplog, name)
    assert mock.control({})["queued"] == [], "every hostile shot was requested"
    if elsewhere is not None:
        assert elsewhere.stats()["requests"] == 0, "a redirect to another host was followed"


# ---- Retry-After beyond reason ----------------------------------------------------------------


ABSURD_RETRY_AFTER = ["1000000000", "Fri, 31 Dec 9999 23:59:59 GMT", "1e999"]


@pytest.mark.parametrize("value", ABSURD_RETRY_AFTER)
def test_absurd_retry_after_is_capped_and_honoured(value, make_mock, store, redis_client, warm_name, caplog):
    """Retry-After 10^9 s with max_retry_after_s=1: the drain waits 1 s, not 31 years, then carries on."""
    caplog.set_level(logging.INFO, logger="event_ingest")
    name = warm_name()
    mock = make_mock(backlog=BACKLOG)
    mock.control({"next": [{"kind": "status", "status": 429, "headers": {"Retry-After": value}}]})
    stats = drain(
        hostile_source(name, mock.url, max_retry_after_s=1.0), store=store, redis_client=redis_client, options=OPTIONS
    )
    assert stats.status == DrainStatus.CAUGHT_UP and stats.errors == 1, stats.summary()
    assert stats.retry_after_s == 1.0, stats.summary()  # capped: asked to wait 1 s, not 31 years
    assert query(store, "SELECT event_id FROM events WHERE source = %s ORDER BY 1", name) == [(i,) for i in range(1, 6)]
    arrivals = mock.stats()
    # At the source: 429, page, empty page; the retry came at least the capped second after the 429.
    # With two gaps, the longer is 2 * median - min. (How much longer is not judged: a busy machine stalls.)
    assert arrivals["requests"] == 3 and arrivals["statuses"] == {"200": 2, "429": 1}
    assert arrivals["min_gap_ms"] >= 200
    assert 2 * arrivals["median_gap_ms"] - arrivals["min_gap_ms"] >= 1000
    assert any(name in line and "HTTP 429 (Retry-After 1s)" in line for line in log_lines(caplog))


def test_retry_after_beyond_the_budget_ends_the_drain_and_holds_every_consumer_back(
    make_mock, store, redis_client, warm_name, caplog
):
    """Capped at 60 s but the budget is 3 s: the drain stops rather than sleeping into its budget, the
    gate is pushed 60 s forward (not 10^9 s), and the next drain gives up without asking the source."""
    caplog.set_level(logging.INFO, logger="event_ingest")
    name = warm_name()
    mock = make_mock(backlog=BACKLOG)
    mock.control({"next": [{"kind": "status", "status": 429, "headers": {"Retry-After": "1000000000"}}]})
    source = hostile_source(name, mock.url, max_retry_after_s=60.0, max_run_seconds=3.0)

    stats = drain(source, store=store, redis_client=redis_client, options=OPTIONS)
    # Ended by the Retry-After it could not wait out (a drain that slept would end budget_spent).
    assert stats.status == DrainStatus.SOURCE_ERROR, stats.summary()
    assert "asked to wait 60s (Retry-After)" in stats.error
    gate = Gate(redis_client, name, interval_s=INTERVAL_S, hold_s=TIMEOUT_S + INTERVAL_S, token="probe")
    granted, wait_us = gate.try_acquire()
    # Pushed by the cap, not by 10^9 s (the lower bound leaves half a minute for a stalled machine).
    assert not granted and 30.0 < wait_us / 1e6 <= 60.0, wait_us

    again = drain(source, store=store, redis_client=redis_client, options=OPTIONS)
    assert again.status == DrainStatus.BUDGET_SPENT, again.summary()
    assert mock.stats()["requests"] == 1  # the source saw the 429'd request and nothing since
    assert query(store, "SELECT count(*) FROM events WHERE source = %s", name) == [(0,)]
    assert any(name in line and "asked to wait 60s" in line for line in log_lines(caplog))


# ---- one hostile source does not stop the others ------------------------------------------------


def test_the_consumer_keeps_serving_the_other_sources(make_mock, store, redis_client, warm_name, caplog):
    """Hostile sources and a healthy one drained in turn by the same code in the same process:
    each hostile drain ends in bounded time with a clean status, and the healthy one is complete."""
    caplog.set_level(logging.INFO, logger="event_ingest")
    hostile = {
        "slowloris": [{"kind": "slow_body", "interval_ms": 50, "duration_s": 30}] * 2,
        "gzip_bomb": [{"kind": "gzip_bomb", "size_mb": 64}] * 2,
        "redirect": [{"kind": "redirect", "location": "http://169.254.169.254/latest/meta-data/"}],
        "retry_after": [{"kind": "status", "status": 429, "headers": {"Retry-After": "1000000000"}}],
        "garbage": [body("\x00\xff not a page"), body("<html>")],
    }
    sources = []
    for kind, shots in hostile.items():
        mock = make_mock(name=kind, backlog=BACKLOG)
        mock.control({"next": shots})
        sources.append(hostile_source(warm_name(), mock.url, max_response_bytes=1 << 20, max_run_seconds=3.0))
    healthy_mock = make_mock(name="healthy", backlog=120)
    healthy = hostile_source(warm_name(), healthy_mock.url, page_size=50)

    # Each drain ends on its own (bounded by its budget; how fast is the benchmark's business, not this test's).
    results = [drain(s, store=store, redis_client=redis_client, options=OPTIONS) for s in [*sources, healthy]]

    *bad, good = results
    for stats in bad:
        assert stats.status == DrainStatus.SOURCE_ERROR and stats.error, stats.summary()
        assert query(store, "SELECT count(*) FROM events WHERE source = %s", stats.source) == [(0,)]
    assert good.status == DrainStatus.CAUGHT_UP, good.summary()
    ids = query(store, "SELECT event_id FROM events WHERE source = %s ORDER BY 1", healthy.name)
    assert [i for (i,) in ids] == list(range(1, 121))
    assert healthy_mock.stats()["gaps_under_200ms"] == 0
    lines = log_lines(caplog)
    for stats in bad:
        assert any(stats.source in line and "source_error" in line for line in lines)
