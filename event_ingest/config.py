"""Configuration: the sources file and the service URLs.

Sources are data, not classes: one YAML file lists them, each with optional
per-source overrides of the defaults. The file is validated at load and a bad
one fails with ONE line naming the file, the source and the field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import yaml

SOURCES_ENV = "EVENT_INGEST_SOURCES"
DATABASE_URL_ENV = "EVENT_INGEST_DATABASE_URL"
REDIS_URL_ENV = "EVENT_INGEST_REDIS_URL"
DEFAULT_SOURCES_FILE = "sources.yaml"

# Source names reach SQL identifiers (partition names) and Redis keys, so only
# this shape is ever let through.
SOURCE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")  # always used with fullmatch ("$" lets "a\n" through)


def is_valid_source_name(name: object) -> bool:
    return isinstance(name, str) and SOURCE_NAME_RE.fullmatch(name) is not None

# The politeness floor: nobody can configure a source to be hit faster.
MIN_INTERVAL_FLOOR_MS = 200


class ConfigError(ValueError):
    """A configuration problem; the message is one line that says what and where."""


@dataclass(frozen=True)
class SourceConfig:
    name: str
    url: str
    page_size: int = 1000
    min_interval_ms: int = 200
    timeout_s: float = 10.0
    max_run_seconds: float = 120.0
    max_attempts: int = 5
    max_response_bytes: int = 32 * 1024 * 1024
    max_payload_bytes: int = 1024 * 1024
    max_retry_after_s: float = 300.0
    idle_poll_ms: int | None = None  # when caught up, poll this often (default: min_interval_ms)
    max_lag_s: float = 30.0  # the freshness check fails when the source was last polled longer ago

    def __post_init__(self) -> None:
        # Names reach SQL identifiers and Redis keys: no SourceConfig exists with an unchecked one,
        # however it was built (the file loader checks it too, with the file's name in the message).
        validate_source_name(self.name)

    @property
    def min_interval_s(self) -> float:
        return self.min_interval_ms / 1000.0

    @property
    def idle_poll_s(self) -> float:
        """How often a caught-up source is polled: never faster than the spacing rule."""
        return max(self.idle_poll_ms or 0, self.min_interval_ms) / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# field -> (type check, rule, human description)
_NUMERIC_FIELDS: dict[str, tuple[type | tuple[type, ...], Any, str]] = {
    "page_size": (int, lambda v: 1 <= v <= 100_000, "an integer from 1 to 100000"),
    "min_interval_ms": (
        int,
        lambda v: MIN_INTERVAL_FLOOR_MS <= v <= 3_600_000,
        f"an integer of at least {MIN_INTERVAL_FLOOR_MS} (the spacing rule) and at most 3600000",
    ),
    "timeout_s": ((int, float), lambda v: 0.1 <= v <= 300, "a number of seconds from 0.1 to 300"),
    "max_run_seconds": ((int, float), lambda v: 1 <= v <= 86_400, "a number of seconds from 1 to 86400"),
    "max_attempts": (int, lambda v: 1 <= v <= 100, "an integer from 1 to 100"),
    "max_response_bytes": (int, lambda v: 1024 <= v <= 1 << 31, "an integer from 1024 to 2147483648"),
    "max_payload_bytes": (int, lambda v: 16 <= v <= 1 << 30, "an integer from 16 to 1073741824"),
    "max_retry_after_s": ((int, float), lambda v: 1 <= v <= 86_400, "a number of seconds from 1 to 86400"),
    "max_lag_s": ((int, float), lambda v: 1 <= v <= 7 * 86_400, "a number of seconds from 1 to 604800"),
    "idle_poll_ms": (
        int,
        lambda v: MIN_INTERVAL_FLOOR_MS <= v <= 3_600_000,
        f"an integer of milliseconds from {MIN_INTERVAL_FLOOR_MS} to 3600000",
    ),
}
_ALLOWED_FIELDS = {f.name for f in fields(SourceConfig)}


@dataclass(frozen=True)
class RunSettings:
    """How long-lived Dagster runs host the sources (the `runs:` section of the sources file)."""

    sources_per_run: int = 25  # one run process hosts up to this many sources, one thread each
    run_seconds: float = 1800.0  # a run hands its sources to a successor after this long
    handoff_s: float = 60.0  # the successor is asked for this long before: it must be up and waiting by then
    lease_ttl_s: float = 6.0  # a dead run's (or server's) sources are taken over within about this long
    report_every_s: float = 20.0  # progress and checks of each source reach Dagster at most this often

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_RUN_FIELDS: dict[str, tuple[type | tuple[type, ...], Any, str]] = {
    "sources_per_run": (int, lambda v: 1 <= v <= 1000, "an integer from 1 to 1000"),
    "run_seconds": ((int, float), lambda v: 60 <= v <= 7 * 86_400, "a number of seconds from 60 to 604800"),
    "handoff_s": ((int, float), lambda v: 5 <= v <= 3600, "a number of seconds from 5 to 3600"),
    "lease_ttl_s": ((int, float), lambda v: 1 <= v <= 600, "a number of seconds from 1 to 600"),
    "report_every_s": ((int, float), lambda v: 1 <= v <= 3600, "a number of seconds from 1 to 3600"),
}


@dataclass(frozen=True)
class IngestConfig:
    """The whole sources file."""

    sources: list[SourceConfig]
    runs: RunSettings = RunSettings()

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"source {name!r} is not configured (configured: {known})")


def validate_source_name(name: Any, where: str = "source") -> str:
    if not is_valid_source_name(name):
        raise ConfigError(
            f"{where}: field 'name': {name!r} is not a valid source name "
            "(lowercase letter, then up to 62 of a-z, 0-9, _)"
        )
    return name


def validate_url(url: Any, where: str) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"{where}: field 'url': expected a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: field 'url': {url!r} is not an http(s) URL with a host")
    if parts.query or parts.fragment:
        raise ConfigError(
            f"{where}: field 'url': {url!r} must not carry a query or fragment "
            "(lastId and limit are added by event-ingest)"
        )
    return url


def parse_source(raw: Any, where: str) -> SourceConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'name' and 'url', got {type(raw).__name__}")
    name = validate_source_name(raw.get("name"), where)
    where = f"{where.rsplit(':', 1)[0]}: source {name!r}" if ":" in where else f"source {name!r}"
    unknown = sorted(set(raw) - _ALLOWED_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: field {unknown[0]!r} is not known "
            f"(known fields: {', '.join(sorted(_ALLOWED_FIELDS))})"
        )
    if "url" not in raw:
        raise ConfigError(f"{where}: field 'url' is missing")
    values: dict[str, Any] = {"name": name, "url": validate_url(raw["url"], where)}
    values.update(_checked(raw, _NUMERIC_FIELDS, where))
    return SourceConfig(**values)


def _checked(raw: dict, rules: dict, where: str) -> dict[str, Any]:
    values = {}
    for key, (types, rule, description) in rules.items():
        if key not in raw:
            continue
        value = raw[key]
        # bool is an int in Python; `page_size: true` is still a mistake.
        if isinstance(value, bool) or not isinstance(value, types) or not rule(value):
            raise ConfigError(f"{where}: field {key!r}: {value!r} is not valid; expected {description}")
        values[key] = value
    return values


def parse_runs(raw: Any, origin: str) -> RunSettings:
    where = f"{origin}: runs"
    if raw is None:
        return RunSettings()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_RUN_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: field {unknown[0]!r} is not known (known fields: {', '.join(_RUN_FIELDS)})")
    settings = RunSettings(**_checked(raw, _RUN_FIELDS, where))
    if settings.handoff_s * 2 > settings.run_seconds:
        raise ConfigError(f"{where}: field 'handoff_s': {settings.handoff_s!r} is not valid; expected at most "
                          f"half of run_seconds ({settings.run_seconds:g})")
    return settings


def parse_config(document: Any, origin: str) -> IngestConfig:
    if not isinstance(document, dict) or "sources" not in document:
        raise ConfigError(f"{origin}: expected a top-level 'sources:' list")
    extra = sorted(set(document) - {"sources", "runs"})
    if extra:
        raise ConfigError(f"{origin}: top-level field {extra[0]!r} is not known (only 'sources' and 'runs')")
    return IngestConfig(sources=_parse_source_list(document, origin), runs=parse_runs(document.get("runs"), origin))


def parse_sources(document: Any, origin: str) -> list[SourceConfig]:
    return parse_config(document, origin).sources


def _parse_source_list(document: dict, origin: str) -> list[SourceConfig]:
    items = document["sources"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{origin}: field 'sources': expected a non-empty list")
    result: list[SourceConfig] = []
    seen: set[str] = set()
    for index, raw in enumerate(items):
        source = parse_source(raw, f"{origin}: sources[{index}]")
        if source.name in seen:
            raise ConfigError(f"{origin}: source {source.name!r}: field 'name': duplicate source name")
        seen.add(source.name)
        result.append(source)
    return result


def sources_path(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(SOURCES_ENV) or DEFAULT_SOURCES_FILE)


def load_sources(path: str | os.PathLike[str] | None = None) -> list[SourceConfig]:
    """Load and validate the sources file (default: $EVENT_INGEST_SOURCES or ./sources.yaml)."""
    return load_config(path).sources


def load_config(path: str | os.PathLike[str] | None = None) -> IngestConfig:
    """The whole sources file: its sources and its `runs:` settings, validated."""
    file = sources_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: sources file not found (set {SOURCES_ENV} or create {DEFAULT_SOURCES_FILE})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read sources file: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(document, str(file))


def require_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set ({what})")
    return value


def database_url() -> str:
    return require_env(DATABASE_URL_ENV, "the Postgres URL, e.g. postgresql://user@host:5432/db")


def redis_url() -> str:
    return require_env(REDIS_URL_ENV, "the Redis URL, e.g. redis://host:6379/0")


def redact_url(url: str) -> str:
    """A URL fit for logs: the password replaced by ***, in the user:password@ part and in a
    ?password= parameter (libpq and redis-py accept both)."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if parts.query:
        query = [
            (key, "***" if key.lower() in ("password", "pass", "passwd") else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()


@dataclass
class Settings:
    """Everything one drain needs to reach its services."""

    database_url: str
    redis_url: str
    sources: list[SourceConfig] = field(default_factory=list)

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"source {name!r} is not configured (configured: {known})")
