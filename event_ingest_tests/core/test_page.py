"""Page parsing: every item is stored or quarantined, never dropped."""

from __future__ import annotations

import json

import pytest

from event_ingest.core.page import MalformedPage, parse_page


def parse(doc, cursor=0, cap=1000):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_page(body, cursor=cursor, max_payload_bytes=cap)


def test_a_good_page():
    page = parse({"events": [{"id": 1, "payload": {"a": 1}}, {"id": 2, "payload": None}, {"id": 3}]})
    assert [e.id for e in page.events] == [1, 2, 3]
    assert page.events[0].payload_json == '{"a":1}'
    assert page.events[2].payload_json == "null"  # payload missing: stored as null
    assert page.next_cursor(0) == 3 and not page.quarantined


def test_empty_page_means_caught_up():
    page = parse({"events": []})
    assert page.empty and page.next_cursor(7) == 7


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "empty body"),
        (b"<html>oops</html>", "not JSON"),
        (b'{"events": [', "not JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"items": []}', "'events' is missing"),
        (b'{"events": null}', "'events' is null"),
        (b'{"events": {"id": 1}}', "'events' is dict"),
        (b'{"events": "1,2"}', "'events' is str"),
        (b"[1, 2]", "top level is list"),
        (b'{"events": [{"id": 1, "payload": NaN}]}', "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_pages_are_refused_whole(body, reason):
    with pytest.raises(MalformedPage, match=reason):
        parse(body)


@pytest.mark.parametrize(
    "item, reason",
    [
        (5, "event is int"),
        ("x", "event is str"),
        ({"payload": 1}, "id is missing"),
        ({"id": None}, "id is null"),
        ({"id": "7"}, "not an integer"),
        ({"id": 7.0}, "not an integer"),
        ({"id": True}, "not an integer"),
        ({"id": -1}, "not positive"),
        ({"id": 0}, "not positive"),
        ({"id": 2**64}, "64 bits"),
    ],
)
def test_bad_items_are_quarantined_with_a_reason(item, reason):
    page = parse({"events": [{"id": 1}, item, {"id": 2}]})
    assert [e.id for e in page.events] == [1, 2]
    assert len(page.quarantined) == 1
    assert reason in page.quarantined[0].reason
    assert page.quarantined[0].raw  # the item's bytes are kept
    assert page.next_cursor(0) == 2


def test_payload_over_the_cap_is_quarantined_but_accounted_for():
    page = parse({"events": [{"id": 1, "payload": "x" * 2000}, {"id": 2}]}, cap=100)
    assert [e.id for e in page.events] == [2]
    assert page.quarantined[0].event_id == 1 and "cap" in page.quarantined[0].reason
    assert page.next_cursor(0) == 2


def test_payloads_postgres_cannot_hold_are_quarantined():
    page = parse(b'{"events": [{"id": 1, "payload": "a\\u0000b"}, {"id": 2, "payload": "\\ud800"}, {"id": 3}]}')
    assert [e.id for e in page.events] == [3]
    reasons = " ".join(q.reason for q in page.quarantined)
    assert "NUL" in reasons and "surrogate" in reasons


def test_duplicates_unordered_and_resent_ids():
    page = parse({"events": [{"id": 5}, {"id": 3}, {"id": 5}, {"id": 1}]}, cursor=2)
    assert [e.id for e in page.events] == [5, 3, 1]
    assert page.quarantined[0].event_id == 5 and "duplicate" in page.quarantined[0].reason
    text = " ".join(page.warnings)
    assert "not ascending" in text and "at or below the cursor" in text
    assert page.next_cursor(2) == 5
