"""Configuration: the sources file, the environment variables, and the defaults they share.

Sources are data, not classes: one YAML file lists them, each with optional per-source
overrides of the defaults. Each field is declared once, below, with its type, range, default
and meaning; validation, the JSON schema (``event-ingest config schema``, committed as
``sources.schema.json``) and the README's tables all come from that declaration. A bad file
fails at load with ONE line naming the file, the source and the field.

Request headers may carry credentials, so a header's value can name an environment variable
(``Authorization: {env: SOURCE1_TOKEN}``) instead of being written in the file, and header
values are never shown: not in ``repr()``, ``to_dict()``, errors or logs.

Every ``EVENT_INGEST_*`` variable the product reads is named here and imported elsewhere;
``dagster.yaml`` and ``docker-compose.yml`` spell them out (tests cross-check them).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import parse_qsl, urlencode, urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

# ---- environment variables: every EVENT_INGEST_* name the product reads ---------------------------

SOURCES_ENV = "EVENT_INGEST_SOURCES"  # path of the sources file
DATABASE_URL_ENV = "EVENT_INGEST_DATABASE_URL"  # Postgres for events
REDIS_URL_ENV = "EVENT_INGEST_REDIS_URL"  # Redis for leases and the gate
DATABASE_POOLER_ENV = "EVENT_INGEST_DATABASE_POOLER"  # "transaction": a pooler (PgBouncer) in transaction mode
DAGSTER_DATABASE_URL_ENV = "EVENT_INGEST_DAGSTER_DATABASE_URL"  # Postgres for Dagster's own storage
ALERT_WEBHOOK_URL_ENV = "EVENT_INGEST_ALERT_WEBHOOK_URL"  # where the alert sensors POST
DAGSTER_UI_URL_ENV = "EVENT_INGEST_DAGSTER_UI_URL"  # links in alerts
RUN_RETENTION_DAYS_ENV = "EVENT_INGEST_RUN_RETENTION_DAYS"  # days finished runs are kept
FAILED_RUN_RETENTION_DAYS_ENV = "EVENT_INGEST_FAILED_RUN_RETENTION_DAYS"  # days failed runs are kept

# ---- defaults used beyond the sources file ----------------------------------------------------------

DEFAULT_SOURCES_FILE = "sources.yaml"
SCHEMA_FILE = "sources.schema.json"  # the JSON schema of the sources file, at the top of the repo
LEASE_TTL_S = 6.0  # a dead holder's (run's, server's) source is free again after about this long
LEASE_WAIT_S = 5.0  # how long a one-off drain or skip waits for a busy lease
DEFAULT_RUN_RETENTION_DAYS = 7.0  # unless $EVENT_INGEST_RUN_RETENTION_DAYS says otherwise
DEFAULT_FAILED_RUN_RETENTION_DAYS = 30.0  # unless $EVENT_INGEST_FAILED_RUN_RETENTION_DAYS says otherwise
# The politeness floor: nobody can configure a source to be hit faster.
MIN_INTERVAL_FLOOR_MS = 200

# Source names reach SQL identifiers (partition names) and Redis keys, so only this shape is
# ever let through.
SOURCE_NAME_PATTERN = r"[a-z][a-z0-9_]{0,62}"
SOURCE_NAME_RE = re.compile(SOURCE_NAME_PATTERN)  # always used with fullmatch ("$" lets "a\n" through)


def is_valid_source_name(name: object) -> bool:
    return isinstance(name, str) and SOURCE_NAME_RE.fullmatch(name) is not None


class ConfigError(ValueError):
    """A configuration problem; the message is one line that says what and where."""


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


# ---- field validators: they raise ValueError("what is wrong"); the loader adds file, source, field ----


class _FieldProblem(ValueError):
    """A rule across fields, reported on one of them (``loc`` below the model that raised it)."""

    def __init__(self, loc: tuple[str | int, ...], text: str) -> None:
        super().__init__(text)
        self.loc = loc


def _source_name(raw: Any) -> str:
    if not is_valid_source_name(raw):
        raise ValueError(f"{_shown(raw)} is not a valid source name (lowercase letter, then up to 62 of a-z, 0-9, _)")
    return raw


def _source_url(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_shown(redact_url(raw))} is not an http(s) URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(
            f"{_shown(redact_url(raw))} must not carry a query or fragment (lastId and limit are added by event-ingest)"
        )
    return raw


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
            raise ValueError(f"{_shown(name)} is not a valid header name")
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


def _ca_file(raw: Any, url: str | None, base_dir: Path | None) -> str:
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


# ---- the declaration ------------------------------------------------------------------------------


class _Declared(BaseModel):
    """Frozen, no unknown fields, and a one-line ConfigError when built in code with bad values."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, type(self), data, _where_in_code(type(self), data))) from None

    # Marks this __init__ as pydantic's own: validating a file (model_validate) then skips it, so
    # the loader's context (the file's folder) reaches nested sources and the loader words errors.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class SourceConfig(_Declared):
    """One event source: where it is, and how fast, how patiently and how much to read from it."""

    name: Annotated[str, BeforeValidator(_source_name)] = Field(
        json_schema_extra={"pattern": f"^{SOURCE_NAME_PATTERN}$"},
        description=f"`^{SOURCE_NAME_PATTERN}$`; becomes the partition key, the table partition and the Redis keys",
    )
    url: Annotated[str, BeforeValidator(_source_url)] = Field(
        json_schema_extra={"pattern": "^https?://"},
        description="http(s) URL without a query; `lastId` and `limit` are added",
    )
    page_size: StrictInt = Field(1000, ge=1, le=100_000, description="sent as `limit`")
    min_interval_ms: StrictInt = Field(
        200,
        ge=MIN_INTERVAL_FLOOR_MS,
        le=3_600_000,
        description=f"spacing between requests to this source; below {MIN_INTERVAL_FLOOR_MS} is rejected",
    )
    timeout_s: StrictFloat = Field(
        10.0, ge=0.1, le=300, description="whole-request deadline (a body that dribbles forever is cut here)"
    )
    max_run_seconds: StrictFloat = Field(
        120.0, ge=1, le=86_400, description="time budget of one bounded drain (`event-ingest ingest`, the `drain` job)"
    )
    max_attempts: StrictInt = Field(
        5, ge=1, le=100, description="attempts per page on 5xx, timeouts, resets, malformed bodies"
    )
    max_response_bytes: StrictInt = Field(
        32 * 1024 * 1024, ge=1024, le=1 << 31, description="cap on a decoded response body (gzip bombs included)"
    )
    max_payload_bytes: StrictInt = Field(
        1024 * 1024, ge=16, le=1 << 30, description="an event whose payload is larger is quarantined"
    )
    max_retry_after_s: StrictFloat = Field(
        300.0, ge=1, le=86_400, description="a larger `Retry-After` is capped to this"
    )
    idle_poll_ms: StrictInt | None = Field(
        None,
        ge=MIN_INTERVAL_FLOOR_MS,
        le=3_600_000,
        description="when caught up, poll this often (none: every `min_interval_ms`); never faster than "
        "`min_interval_ms`; at most `max_lag_s` (a healthy idle source polled less often would fail its "
        "freshness check between polls)",
    )
    max_lag_s: StrictFloat = Field(
        30.0,
        ge=1,
        le=7 * 86_400,
        description="the freshness check (and `event-ingest status --check`) fails when the source was last "
        "polled successfully longer ago than this",
    )
    headers: Headers = Field(
        (),
        json_schema_extra={"default": {}},  # as the file spells "none" (the resolved form is a tuple)
        description="request headers sent with every request; a value is a string or `{env: VARIABLE}`, read "
        "from the environment when the file is loaded (a missing variable is one error naming file, "
        "source, header and variable). Values are never shown: `***` in logs, errors, "
        "`repr`/`to_dict`, CLI output and Dagster metadata, even when the source echoes them back. "
        "`Host`, `Content-Length`, `Accept-Encoding` and other transport headers cannot be set",
    )
    ca_file: str | None = Field(
        None,
        description="`https` only: trust this PEM CA bundle (a path relative to the sources file) instead of the "
        "system's certificate store (which is used otherwise, not a bundle shipped with a Python "
        "package). An untrusted certificate is one non-retried error saying which store refused it",
    )

    @field_validator("ca_file", mode="before")
    @classmethod
    def _check_ca_file(cls, raw: Any, info: ValidationInfo) -> str | None:
        if raw is None:
            return None
        base_dir = (info.context or {}).get("base_dir")
        return _ca_file(raw, info.data.get("url"), base_dir)  # no url: its own error is reported

    @model_validator(mode="after")
    def _polled_within_its_lag(self) -> SourceConfig:
        if self.idle_poll_ms is not None and self.idle_poll_ms > self.max_lag_s * 1000:
            raise _FieldProblem(
                ("idle_poll_ms",),
                f"{self.idle_poll_ms} is not valid; expected at most max_lag_s ({self.max_lag_s:g} s = "
                f"{self.max_lag_s * 1000:g} ms): a source polled less often than its max_lag_s is reported late "
                "while healthy (raise max_lag_s or lower idle_poll_ms)",
            )
        return self

    @property
    def min_interval_s(self) -> float:
        return self.min_interval_ms / 1000.0

    @property
    def idle_poll_s(self) -> float:
        """How often a caught-up source is polled: never faster than the spacing rule."""
        return max(self.idle_poll_ms or 0, self.min_interval_ms) / 1000.0

    def to_dict(self) -> dict[str, Any]:
        """Every field, header values redacted (safe to print, log or put in metadata)."""
        return self.model_dump()

    def secret_values(self) -> list[str]:
        """Header values as sent, for scrubbing text that came back from the source (an error page
        that echoes the token). Whole values, and their long words (the token after "Bearer ")."""
        found: set[str] = set()
        for _, header in self.headers:
            found.update(part for part in [header.value, *header.value.split()] if len(part) >= 8)
        return sorted(found, key=len, reverse=True)


class RunSettings(_Declared):
    """How long-lived Dagster runs host the sources (the `runs:` section of the sources file)."""

    sources_per_run: StrictInt = Field(
        25, ge=1, le=1000, description="one `ingest` run process hosts up to this many sources, one thread each"
    )
    run_seconds: StrictFloat = Field(
        1800.0, ge=60, le=7 * 86_400, description="a run hands its sources to a successor after this long"
    )
    handoff_s: StrictFloat = Field(
        60.0,
        ge=5,
        le=3600,
        description="the successor is asked for this long before: it must be up and waiting by then; at most "
        "half of `run_seconds`",
    )
    lease_ttl_s: StrictFloat = Field(
        LEASE_TTL_S,
        ge=1,
        le=600,
        description="a dead run's (or server's) sources are taken over within about this long",
    )
    report_every_s: StrictFloat = Field(
        20.0, ge=1, le=3600, description="progress and checks of each source reach Dagster at most this often"
    )

    @model_validator(mode="after")
    def _handoff_fits_in_a_run(self) -> RunSettings:
        if self.handoff_s * 2 > self.run_seconds:
            raise _FieldProblem(
                ("handoff_s",),
                f"{self.handoff_s:g} is not valid; expected at most half of run_seconds ({self.run_seconds:g})",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _no_runs_means_defaults(raw: Any) -> Any:
    return {} if raw is None else raw  # `runs:` with every line commented out


class IngestConfig(_Declared):
    """The sources file: the sources to read, and how Dagster runs host them."""

    model_config = ConfigDict(title="event-ingest sources file")

    sources: list[SourceConfig] = Field(min_length=1, description="the event sources; names are unique")
    runs: Annotated[RunSettings, BeforeValidator(_no_runs_means_defaults)] = Field(
        default_factory=RunSettings, description="how long-lived Dagster runs host the sources"
    )

    @model_validator(mode="after")
    def _names_are_unique(self) -> IngestConfig:
        seen: set[str] = set()
        for index, source in enumerate(self.sources):
            if source.name in seen:
                raise _FieldProblem(("sources", index, "name"), "duplicate source name")
            seen.add(source.name)
        return self

    def source(self, name: str) -> SourceConfig:
        return _find_source(self.sources, name)


def _find_source(sources: list[SourceConfig], name: str) -> SourceConfig:
    for source in sources:
        if source.name == name:
            return source
    known = ", ".join(s.name for s in sources) or "none"
    raise ConfigError(f"source {name!r} is not configured (configured: {known})")


def sources_schema() -> dict[str, Any]:
    """The JSON schema of the sources file (committed as sources.schema.json, for editors)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **IngestConfig.model_json_schema()}


# ---- pydantic's errors as one line: file, source, field ------------------------------------------


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)  # repr escapes line breaks: the message stays one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where_in_code(model: type[BaseModel], data: Mapping[str, Any]) -> str | None:
    if model is SourceConfig:
        name = data.get("name")
        return f"source {name!r}" if is_valid_source_name(name) else "source"
    return "runs" if model is RunSettings else None


def _name_of(raw: Any) -> Any:
    return raw.get("name") if isinstance(raw, Mapping) else getattr(raw, "name", None)


def _locate(loc: tuple, model: type[BaseModel], document: Any, where: str | None):
    """For an error at ``loc``: the model that holds the field, where that is in words ("source 'a'",
    "sources[2]", "runs"), and the loc below it (the field first)."""
    if model is IngestConfig and len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
        items = document.get("sources") if isinstance(document, Mapping) else None
        raw = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        name = _name_of(raw)
        return SourceConfig, f"source {name!r}" if is_valid_source_name(name) else f"sources[{loc[1]}]", loc[2:]
    if model is IngestConfig and loc[:1] == ("runs",):
        return RunSettings, "runs", loc[1:]
    return model, where, loc


def _expected(info: FieldInfo, name: str) -> str:
    """What a field takes, in words, from its declaration: "an integer of milliseconds from 200 to 3600000"."""
    optional = get_origin(info.annotation) in (Union, UnionType) and type(None) in get_args(info.annotation)
    kind = next(t for t in get_args(info.annotation) if t is not type(None)) if optional else info.annotation
    base = get_origin(kind) or kind  # list[SourceConfig] -> list
    if base is Annotated:  # Annotated[int, Strict()] -> int
        base = get_args(kind)[0]
    if base is list:
        return "a non-empty list" if any(getattr(m, "min_length", 0) for m in info.metadata) else "a list"
    words = {int: "an integer", float: "a number", str: "a string"}.get(base, f"a {getattr(base, '__name__', base)}")
    unit = next(
        (
            u
            for suffix, u in (("_ms", "milliseconds"), ("_s", "seconds"), ("_seconds", "seconds"), ("_bytes", "bytes"))
            if name.endswith(suffix)
        ),
        None,
    )
    if unit:
        words += f" of {unit}"
    low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
    if low is not None and high is not None:
        words += f" from {low} to {high}"
    elif low is not None:
        words += f" of at least {low}"
    if optional:
        words += " (or null)"
    return words


def _describe(error: dict, model: type[BaseModel], where: str | None, loc: tuple) -> str:
    kind = error["type"]
    cause = (error.get("ctx") or {}).get("error")
    prefix = f"{where}: " if where else ""
    if not loc:
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            required = [f"'{n}'" for n, f in model.model_fields.items() if f.is_required()]
            with_ = f" with {' and '.join(required)}" if required else ""
            return f"{prefix}expected a mapping{with_}, got {type(error['input']).__name__}"
        return f"{prefix}{cause if cause is not None else error['msg']}"
    name = loc[0]
    top = "top-level " if where is None else ""
    if kind == "missing":
        return f"{prefix}{top}field {name!r} is missing"
    if kind in ("extra_forbidden", "invalid_key"):  # invalid_key: a YAML key that is not a string
        return f"{prefix}{top}field {name!r} is not known (known fields: {', '.join(model.model_fields)})"
    if cause is not None:
        return f"{prefix}{top}field {name!r}: {cause}"
    info = model.model_fields.get(name) if isinstance(name, str) else None
    expected = _expected(info, name) if info is not None else error["msg"]
    return f"{prefix}{top}field {name!r}: {_shown(error['input'])} is not valid; expected {expected}"


def _priority(error: dict) -> int:
    # A bad name first: every other message names the source by it.
    return 0 if error["loc"][-1:] == ("name",) else 1


def _one_line(
    exc: ValidationError, model: type[BaseModel], document: Any, where: str | None, origin: str | None = None
) -> str:
    errors = sorted(exc.errors(include_url=False), key=_priority)
    first = errors[0]
    loc = tuple(first["loc"])
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldProblem):  # a rule across fields, reported on the field it names
        loc += cause.loc
    located_model, located_where, loc = _locate(loc, model, document, where)
    text = _describe(first, located_model, located_where, loc)
    if origin:
        text = f"{origin}: {text}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more {'problem' if len(errors) == 2 else 'problems'})"
    return " ".join(text.splitlines())


# ---- loading --------------------------------------------------------------------------------------


def parse_config(document: Any, origin: str, base_dir: Path | None = None) -> IngestConfig:
    """Validate a parsed sources file; ``origin`` names it in errors, ``base_dir`` anchors relative paths."""
    if not isinstance(document, dict) or "sources" not in document:
        raise ConfigError(f"{origin}: expected a top-level 'sources:' list")
    try:
        return IngestConfig.model_validate(document, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, IngestConfig, document, None, origin)) from None


def parse_sources(document: Any, origin: str, base_dir: Path | None = None) -> list[SourceConfig]:
    return parse_config(document, origin, base_dir).sources


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
    return parse_config(document, str(file), file.parent)


# ---- service URLs ---------------------------------------------------------------------------------


def require_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set ({what})")
    return value


def database_url() -> str:
    return require_env(DATABASE_URL_ENV, "the Postgres URL, e.g. postgresql://user@host:5432/db")


def redis_url() -> str:
    return require_env(REDIS_URL_ENV, "the Redis URL, e.g. redis://host:6379/0")


# What may sit between event-ingest and Postgres. Behind a pooler in transaction mode, consecutive transactions
# of one client connection run on different server connections, so a statement prepared in one (psycopg
# prepares a statement after its fifth run) is missing from the next: prepared statements are then off.
POOLER_MODES = {
    "none": "connections go to Postgres itself",
    "session": "a pooler in session mode (a server connection per client connection)",
    "transaction": "a pooler in transaction mode, e.g. PgBouncer's pool_mode = transaction (prepared statements off)",
}


def database_pooler() -> str:
    """The pooler mode ``$EVENT_INGEST_DATABASE_POOLER`` names (unset or empty: none)."""
    value = os.environ.get(DATABASE_POOLER_ENV, "").strip().lower() or "none"
    if value not in POOLER_MODES:
        raise ConfigError(
            f"environment variable {DATABASE_POOLER_ENV}={_shown(value)} is not valid; expected one of "
            f"{', '.join(POOLER_MODES)} (transaction: {POOLER_MODES['transaction']})"
        )
    return value


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
        return _find_source(self.sources, name)
