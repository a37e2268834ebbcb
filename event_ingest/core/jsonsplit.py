"""A JSON object's members and an array's items, found by structure alone, on bytes, nothing parsed.

What the page's salvage (page.py) needs when the JSON parser refuses a body: where each item of one
array member begins and ends, and the raw value of one member of an object, so that each piece can
be parsed (or kept as served) alone. Strings, escapes and nesting are respected at any depth (the scan
is iterative); a body that is not one complete object (truncated, unbalanced, trailing bytes) is never
split. JSON's structural characters are ASCII and never occur inside a multi-byte UTF-8 sequence, so
the split works on bytes, even when a value holds bytes that are not UTF-8.
"""

from __future__ import annotations

import re
from collections.abc import Generator

_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # after the opening quote
_STRUCTURAL = re.compile(rb'[\[\]{}"]')
_SCALAR = re.compile(rb"[^\s,\]}]+")
_CLOSER = {ord("["): ord("]"), ord("{"): ord("}")}


class _NotSplittable(Exception):
    pass


def _skip_ws(body: bytes, i: int) -> int:
    match = _WHITESPACE.match(body, i)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _expect(body: bytes, i: int, char: bytes) -> int:
    if body[i : i + 1] != char:
        raise _NotSplittable
    return i + 1


def _end_of_string(body: bytes, i: int) -> int:
    match = _STRING_REST.match(body, _expect(body, i, b'"'))
    if match is None:
        raise _NotSplittable  # never closed
    return match.end()


def _end_of_value(body: bytes, i: int) -> int:
    """Index just past the value starting at ``i``, judged by structure alone (iterative: any depth)."""
    first = body[i : i + 1]
    if first == b'"':
        return _end_of_string(body, i)
    if first not in (b"[", b"{"):
        match = _SCALAR.match(body, i)
        if match is None:
            raise _NotSplittable
        return match.end()
    closers = [_CLOSER[body[i]]]
    i += 1
    while closers:
        match = _STRUCTURAL.search(body, i)
        if match is None:
            raise _NotSplittable
        char = body[match.start()]
        if char == ord('"'):
            i = _end_of_string(body, match.start())
            continue
        i = match.end()
        if char in _CLOSER:
            closers.append(_CLOSER[char])
        elif char != closers.pop():
            raise _NotSplittable  # [} or {]: where the value ends is not known
    return i


def _members(body: bytes, i: int) -> Generator[tuple[bytes, int, int], None, int]:
    """(raw key, value start, value end) of each member of the object at ``i``; then the index past it."""
    i = _skip_ws(body, _expect(body, i, b"{"))
    if body[i : i + 1] == b"}":
        return i + 1
    while True:
        key_end = _end_of_string(body, i)
        key = body[i:key_end]
        i = _skip_ws(body, _expect(body, _skip_ws(body, key_end), b":"))
        value_end = _end_of_value(body, i)
        yield key, i, value_end
        i = _skip_ws(body, value_end)
        if body[i : i + 1] == b"}":
            return i + 1
        i = _skip_ws(body, _expect(body, i, b","))


def _whole_object(body: bytes) -> list[tuple[bytes, int, int]]:
    """Every member of the one object ``body`` is, in order; raises unless nothing follows it."""
    found = []
    members = _members(body, _skip_ws(body, 0))
    while True:
        try:
            found.append(next(members))
        except StopIteration as done:
            if _skip_ws(body, done.value) != len(body):
                raise _NotSplittable from None
            return found


def _array_items(body: bytes, i: int, end: int) -> list[bytes]:
    i = _skip_ws(body, _expect(body, i, b"["))
    items: list[bytes] = []
    if body[i : i + 1] == b"]":
        return items
    while True:
        item_end = _end_of_value(body, i)
        items.append(body[i:item_end])
        i = _skip_ws(body, item_end)
        if body[i : i + 1] == b"]":
            if i + 1 != end:
                raise _NotSplittable
            return items
        i = _skip_ws(body, _expect(body, i, b","))


def array_member_items(body: bytes, key: str) -> list[bytes] | None:
    """The raw bytes of each item of the top-level member ``key`` (an array), or None unless the body is,
    by its structure, one complete object (brackets balanced, strings closed, nothing after it) whose
    ``key`` is an array. A repeated key: the last one counts, as for ``json.loads``. The key is matched
    as written (an escaped spelling of it is another key here)."""
    raw_key = b'"' + key.encode() + b'"'
    try:
        items: list[bytes] | None = None
        for name, start, end in _whole_object(body):
            if name == raw_key:
                items = _array_items(body, start, end)
        return items
    except (_NotSplittable, IndexError):
        return None


def member_values(raw: bytes, key: str) -> list[bytes] | None:
    """The raw bytes of the value of every top-level member ``key`` of the one object ``raw`` is (as
    many as it repeats), or None unless ``raw`` is, by its structure, one complete object."""
    raw_key = b'"' + key.encode() + b'"'
    try:
        return [raw[start:end] for name, start, end in _whole_object(raw) if name == raw_key]
    except (_NotSplittable, IndexError):
        return None
