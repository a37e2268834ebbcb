"""Strict, typed reading of one one-shot spec (POST /control {"next": [...]})."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

JSON_CONTENT_TYPE = "application/json"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class SpecReader:
    """Typed access to one one-shot spec.

    Unknown keys are rejected so a typo in a chaos test fails loudly at
    POST /control instead of silently sending a default response.
    """

    def __init__(self, spec: Mapping[str, Any], allowed: set[str]) -> None:
        unknown = set(spec) - allowed - {"kind"}
        if unknown:
            raise ValueError(f"{spec.get('kind')}: unknown keys {sorted(unknown)}")
        self._spec = spec
        self._kind = spec.get("kind")

    def _fail(self, key: str, what: str) -> ValueError:
        return ValueError(f"{self._kind}.{key} must be {what}")

    def get_int(self, key: str, default: int | None, lo: int, hi: int) -> int:
        value = self._spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._fail(key, f"an integer in {lo}..{hi}")
        return value

    def get_number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self._spec.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not lo <= value <= hi
        ):
            raise self._fail(key, f"a number in {lo:g}..{hi:g}")
        return float(value)

    def get_str(self, key: str, default: str | None) -> str | None:
        value = self._spec.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        value = self._spec.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def get_body(self) -> bytes | None:
        """``body`` (a string, sent UTF-8) or ``body_b64`` (exact bytes)."""
        if "body" in self._spec and "body_b64" in self._spec:
            raise ValueError(f"{self._kind}: give body or body_b64, not both")
        text = self.get_str("body", None)
        if text is not None:
            return text.encode("utf-8")
        encoded = self.get_str("body_b64", None)
        if encoded is None:
            return None
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise self._fail("body_b64", f"valid base64 ({exc})") from exc

    def get_headers(self) -> list[tuple[str, str]]:
        """A dict, or a list of [name, value] pairs (allows duplicate headers)."""
        raw = self._spec.get("headers", {})
        if isinstance(raw, dict):
            pairs = list(raw.items())
        elif isinstance(raw, list) and all(isinstance(p, list) and len(p) == 2 for p in raw):
            pairs = [(p[0], p[1]) for p in raw]
        else:
            raise self._fail("headers", "an object or a list of [name, value] pairs")
        headers: list[tuple[str, str]] = []
        for name, value in pairs:
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                raise self._fail("headers", f"valid header names, got {name!r}")
            value = str(value)
            # CR/LF would let a spec splice extra lines into the response;
            # hostile framing belongs in explicit, reviewed kinds instead.
            if "\r" in value or "\n" in value:
                raise self._fail("headers", "free of CR/LF")
            headers.append((name, value))
        return headers


def has_header(headers: Sequence[tuple[str, str]], name: str) -> bool:
    return any(k.lower() == name for k, _ in headers)
