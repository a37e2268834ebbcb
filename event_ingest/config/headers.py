"""Request headers: a value written in the file or named by an environment variable, never shown.

Request headers may carry credentials, so a header's value can name an environment variable
(``Authorization: {env: SOURCE1_TOKEN}``) instead of being written in the file, and header
values are never shown: not in ``repr()``, ``to_dict()``, errors or logs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from .wording import shown

# A header name is an HTTP token (RFC 9110); an environment variable name is a shell identifier.
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
# Framing and transport headers belong to the HTTP client: overriding them could desync the
# connection or defeat the body cap (Accept-Encoding decides what the client must inflate).
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "accept-encoding",
        "keep-alive",
        "proxy-authorization",
    }
)
REDACTED = "***"


@dataclass(frozen=True)
class HeaderValue:
    """One request header's value. Shown only as ``***`` or as the variable it came from."""

    value: str = field(repr=False)
    env: str | None = None  # the environment variable it was read from, if any

    def __repr__(self) -> str:
        return f"HeaderValue(env={self.env!r})" if self.env else f"HeaderValue({REDACTED!r})"

    __str__ = __repr__

    def public(self) -> str | dict[str, str]:
        """What may be shown: the file's own spelling for an env value, ``***`` for a literal."""
        return {"env": self.env} if self.env else REDACTED


def _has_control_character(text: str) -> bool:
    # CR/LF would splice extra header lines into the request; the rest no server accepts.
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def _header_value(name: str, raw: Any) -> HeaderValue:
    # The value itself never appears in a message: it may be the secret.
    what = f"header {name!r}"
    if isinstance(raw, dict):
        if set(raw) != {"env"} or not isinstance(raw["env"], str) or not ENV_NAME_RE.fullmatch(raw["env"]):
            raise ValueError(f"{what}: expected {{env: VARIABLE_NAME}} (one key 'env', a variable name)")
        variable = raw["env"]
        value = os.environ.get(variable)
        if not value:
            raise ValueError(f"{what}: environment variable {variable} is not set (it holds the header's value)")
        if _has_control_character(value):
            raise ValueError(f"{what}: environment variable {variable} holds a control character (a line break?)")
        return HeaderValue(value, env=variable)
    if not isinstance(raw, str):
        raise ValueError(f"{what}: expected a string or {{env: VARIABLE_NAME}}, got {type(raw).__name__}")
    if _has_control_character(raw):
        raise ValueError(f"{what}: the value holds a control character (a line break?)")
    return HeaderValue(raw)


def _headers(raw: Any) -> tuple[tuple[str, HeaderValue], ...]:
    if isinstance(raw, tuple) and all(
        isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], HeaderValue) for pair in raw
    ):
        return raw  # already resolved (a SourceConfig's own headers, handed on)
    if not isinstance(raw, Mapping):  # built in code, {"X-Key": "v"} reads as the file would
        raise ValueError("expected a mapping of header name to value")
    parsed: list[tuple[str, HeaderValue]] = []
    seen: set[str] = set()
    for name, value in raw.items():
        if not isinstance(name, str) or not HEADER_NAME_RE.fullmatch(name):
            raise ValueError(f"{shown(name)} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the HTTP client and cannot be configured")
        if name.lower() in seen:
            raise ValueError(f"header {name!r} given twice (names ignore case)")
        seen.add(name.lower())
        parsed.append((name, _header_value(name, value)))
    return tuple(parsed)


# What an editor sees for `headers`: the same rules as _headers, except the reserved names and
# the environment lookup (only the loader can do those).
_HEADERS_SCHEMA = {
    "type": "object",
    "propertyNames": {"pattern": f"^{HEADER_NAME_RE.pattern}$"},
    "additionalProperties": {
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {"env": {"type": "string", "pattern": f"^{ENV_NAME_RE.pattern}$"}},
                "required": ["env"],
                "additionalProperties": False,
            },
        ],
    },
}

Headers = Annotated[
    tuple[tuple[str, HeaderValue], ...],
    PlainValidator(_headers),
    PlainSerializer(lambda headers: {name: value.public() for name, value in headers}),  # never the values
    WithJsonSchema(_HEADERS_SCHEMA),
]
