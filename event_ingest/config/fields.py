"""The rules of single fields: a source's name, its URL, its CA bundle.

Each raises ``ValueError("what is wrong")``; the loader adds file, source and field (``wording``).
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .urls import redact_url
from .wording import shown

# Source names reach SQL identifiers (partition names) and Redis keys, so only this shape is
# ever let through.
SOURCE_NAME_PATTERN = r"[a-z][a-z0-9_]{0,62}"
SOURCE_NAME_RE = re.compile(SOURCE_NAME_PATTERN)  # always used with fullmatch ("$" lets "a\n" through)


def is_valid_source_name(name: object) -> bool:
    return isinstance(name, str) and SOURCE_NAME_RE.fullmatch(name) is not None


def check_source_name(raw: Any) -> str:
    if not is_valid_source_name(raw):
        raise ValueError(f"{shown(raw)} is not a valid source name (lowercase letter, then up to 62 of a-z, 0-9, _)")
    return raw


def check_source_url(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown(redact_url(raw))} is not an http(s) URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(
            f"{shown(redact_url(raw))} must not carry a query or fragment (lastId and limit are added by event-ingest)"
        )
    return raw


def check_ca_file(raw: Any, url: str | None, base_dir: Path | None) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError("expected a file path")
    if url is not None and urlsplit(url).scheme != "https":
        raise ValueError("only used for https urls, and the url is not https")
    path = Path(raw).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path  # relative to the sources file, not to wherever the command runs
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{str(path)!r} is not a readable PEM CA bundle ({why})") from None
    return str(path.resolve())
