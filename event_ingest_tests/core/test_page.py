"""Page parsing: every item is stored or quarantined, never dropped."""

from __future__ import annotations

import json

import pytest

from event_ingest.core.page import MalformedPage, parse_page, scan_id


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
        (b'{"events": [{"id": 1, "payload": NaN}]', "not JSON"),  # truncated: never read item by item
        (b'{"events": [{"id": 1, "payload": NaN}]} trailing', "not JSON"),
        (b'{"events": [{"id": 1, "payload": NaN},]}', "not JSON"),
        (b'{"events": [{"id": 1, "payload": [NaN}]}', "not JSON"),  # brackets that do not match
        (b'{"events": [{"id": 1} {"id": 2, "payload": NaN}]}', "not JSON"),  # no comma between items
        (b'{"events": NaN}', "not JSON"),
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


# ---- salvage: a page the parser refuses whole, read item by item ---------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "item, reason",
    [
        (b'{"id": 2, "payload": ' + DEEP + b"}", "JSON nested too deeply"),
        (b'{"id": 2, "payload": {"n": 1e400}}', "number 1e400 is out of range"),
        (b'{"id": 2, "payload": -1E+999}', "number -1E+999 is out of range"),
        (b'{"id": 2, "payload": ' + b"1" * 5000 + b"}", "an integer has more than 4300 digits"),
        (b'{"id": 2, "payload": "\\q"}', "Invalid \\escape"),
        (b'{"id": 2, "payload": "\xff"}', "item is not valid UTF-8"),
        (b'{"id": 2, "payload": Infinity}', "Infinity is not valid JSON"),
        (b'{"payload": "}]\\"", "id": 2, "x": NaN}', "NaN is not valid JSON"),  # brackets inside a string
    ],
)
def test_one_item_the_parser_refuses_is_quarantined_as_served(item, reason):
    body = b'{"events": [{"id": 1, "payload": "a"}, ' + item + b', {"id": 3, "payload": "c"}]}'
    page = parse(body)
    assert [e.id for e in page.events] == [1, 3]
    [bad] = page.quarantined
    # The exact bytes served, and the id read from them: the cursor may pass it.
    assert bad.raw == item and reason in bad.reason
    assert bad.event_id == 2 and page.next_cursor(0) == 3
    assert any("read item by item" in w for w in page.warnings)


@pytest.mark.parametrize(
    "item",
    [
        b'{"id": 1e400}',
        b'{"id": "7", "x": NaN}',
        b'{"id": 9223372036854775808, "x": NaN}',
        b'{"id": 0, "x": NaN}',
        b'{"id": -4, "x": NaN}',
        b'{"id": 4, "id": 5, "x": NaN}',
        b'{"payload": {"id": 4}, "x": NaN}',
        b'{"id": ' + b"4" * 5000 + b"}",
        b"[4, NaN]",
        b'{"id": 4 "x": 1}',  # broken inside (no comma), balanced outside: where "id" ends is not certain
    ],
)
def test_an_item_without_a_readable_id_stops_the_page_before_it(item):
    body = b'{"events": [{"id": 1}, {"id": 2}, ' + item + b', {"id": 9}, {"id": 10}]}'
    page = parse(body)
    assert [e.id for e in page.events] == [1, 2]  # nothing after it is taken...
    assert [(q.raw, q.event_id) for q in page.quarantined] == [(item, None)]
    assert page.next_cursor(0) == 2  # ...and the cursor stays before it
    assert any(
        "item 3 of 5 cannot be read and has no readable id" in w and "event-ingest skip" in w for w in page.warnings
    )
    # First on the page: nothing moves at all.
    first = parse(b'{"events": [' + item + b', {"id": 9}]}', cursor=8)
    assert first.events == [] and first.next_cursor(8) == 8 and len(first.quarantined) == 1


def test_good_items_with_bad_ids_keep_their_served_bytes_when_read_item_by_item():
    page = parse(b'{"events": [{"id":  "7"}, {"id": 2,  "payload": 1}, {"id": 3, "payload": NaN}], "x": 1}')
    assert [e.id for e in page.events] == [2]
    assert [(q.raw, q.event_id) for q in page.quarantined] == [
        (b'{"id":  "7"}', None),
        (b'{"id": 3, "payload": NaN}', 3),
    ]  # as served, spaces and all
    assert page.next_cursor(0) == 3


def test_scan_id_reads_only_a_top_level_integer_id():
    assert scan_id(b' { "id" : 42 , "p": "\\q" } ') == 42
    assert scan_id(b'{"p": {"id": 5}, "id": 6, "q": [1e999]}') == 6
    assert scan_id(b'{"id": 9223372036854775807, "x": NaN}') == 2**63 - 1
    for unknown in [
        b'{"id": 5, "id": 6}',
        b'{"p": {"id": 5}}',
        b'{"id": 5.0}',
        b'{"id": 05}',
        b'{"id": "5"}',
        b'{"id": 9223372036854775808}',
        b'{"id": 0}',
        b"[5]",
        b'{"id": 5',
        b'{"id": 5} x',
    ]:
        assert scan_id(unknown) is None, unknown
