"""The byte-level JSON splitter: members and array items found by structure alone."""

from __future__ import annotations

import pytest

from event_ingest.core.jsonsplit import array_member_items, member_values


def test_split_respects_strings_escapes_and_nesting():
    body = b' {"a": [1, {"x": "]"}], "events" : [ 1 , "s\\"],{" , [[], {}] , {"k": {"id": 1}} ], "z": null } '
    assert array_member_items(body, "events") == [b"1", b'"s\\"],{"', b"[[], {}]", b'{"k": {"id": 1}}']
    assert array_member_items(body, "a") == [b"1", b'{"x": "]"}']
    assert array_member_items(b'{"events": []}', "events") == []
    assert array_member_items(b'{"events": [1], "events": [2, 3]}', "events") == [b"2", b"3"]  # the last one
    assert array_member_items(b'{"other": [1]}', "events") is None  # no such member


@pytest.mark.parametrize(
    "broken",
    [
        b'{"events": [1',
        b'{"events": [1]',
        b'{"events": [1]}}',
        b'{"events": ["]}',
        b'{"events": 1}',
        b'[{"events": [1]}]',
        b"",
        b'{"events": [1,]}',
        b'{"events": [{"a": 1]}]}',
        b'{"events": [1], "x": [}',  # broken after the array: the body is not one object
    ],
)
def test_a_body_that_is_not_one_complete_object_is_never_split(broken):
    assert array_member_items(broken, "events") is None


def test_member_values_are_raw_and_top_level_only():
    assert member_values(b' { "id" : 42 , "p": "\\q" } ', "id") == [b"42"]
    assert member_values(b'{"p": {"id": 5}, "id": 6, "q": [1e999]}', "id") == [b"6"]
    assert member_values(b'{"id": 5, "id": "6"}', "id") == [b"5", b'"6"']
    assert member_values(b'{"p": {"id": 5}}', "id") == []
    assert member_values(b'{"a": "\\u00e9\xff"}', "a") == [b'"\\u00e9\xff"']  # bytes that are not UTF-8
    for broken in [b"[5]", b'{"id": 5', b'{"id": 5} x', b'{"id" 5}', b""]:
        assert member_values(broken, "id") is None, broken


def test_any_depth():
    deep = b'{"events": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    assert array_member_items(deep, "events") == [b"[" * 100_000 + b"]" * 100_000]
