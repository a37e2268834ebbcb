"""The declaration: each field of the sources file once, with its type, range, default and meaning.

Validation, the JSON schema (``event-ingest config schema``, committed as ``sources.schema.json``) and the
README's tables all come from the classes below. A bad file fails at load with ONE line naming the file,
the source and the field (``wording``); a model built in code with bad values fails the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .env import LEASE_TTL_S
from .fields import SOURCE_NAME_PATTERN, check_ca_file, check_source_name, check_source_url, is_valid_source_name
from .headers import Headers
from .wording import ConfigError, FieldProblem, Loc, one_line

# The politeness floor: nobody can configure a source to be hit faster.
MIN_INTERVAL_FLOOR_MS = 200


class _Declared(BaseModel):
    """Frozen, no unknown fields, and a one-line ConfigError when built in code with bad values."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            where = where_in_code(type(self), data)
            raise ConfigError(one_line(exc, partial(locate, type(self), data, where))) from None

    # Marks this __init__ as pydantic's own: validating a file (model_validate) then skips it, so
    # the loader's context (the file's folder) reaches nested sources and the loader words errors.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class SourceConfig(_Declared):
    """One event source: where it is, and how fast, how patiently and how much to read from it."""

    name: Annotated[str, BeforeValidator(check_source_name)] = Field(
        json_schema_extra={"pattern": f"^{SOURCE_NAME_PATTERN}$"},
        description=f"`^{SOURCE_NAME_PATTERN}$`; becomes the partition key, the table partition and the Redis keys",
    )
    url: Annotated[str, BeforeValidator(check_source_url)] = Field(
        json_schema_extra={"pattern": "^https?://"},
        description="http(s) URL without a query; `lastId` and `limit` are added",
    )
    page_size: StrictInt = Field(default=1000, ge=1, le=100_000, description="sent as `limit`")
    min_interval_ms: StrictInt = Field(
        default=200,
        ge=MIN_INTERVAL_FLOOR_MS,
        le=3_600_000,
        description=f"spacing between requests to this source; below {MIN_INTERVAL_FLOOR_MS} is rejected",
    )
    timeout_s: StrictFloat = Field(
        default=10.0, ge=0.1, le=300, description="whole-request deadline (a body that dribbles forever is cut here)"
    )
    max_run_seconds: StrictFloat = Field(
        default=120.0,
        ge=1,
        le=86_400,
        description="time budget of one bounded drain (`event-ingest ingest`, the `drain` job)",
    )
    max_attempts: StrictInt = Field(
        default=5, ge=1, le=100, description="attempts per page on 5xx, timeouts, resets, malformed bodies"
    )
    max_response_bytes: StrictInt = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        le=1 << 31,
        description="cap on a decoded response body (gzip bombs included)",
    )
    max_payload_bytes: StrictInt = Field(
        default=1024 * 1024, ge=16, le=1 << 30, description="an event whose payload is larger is quarantined"
    )
    max_retry_after_s: StrictFloat = Field(
        default=300.0, ge=1, le=86_400, description="a larger `Retry-After` is capped to this"
    )
    idle_poll_ms: StrictInt | None = Field(
        default=None,
        ge=MIN_INTERVAL_FLOOR_MS,
        le=3_600_000,
        description="when caught up, poll this often (none: every `min_interval_ms`); never faster than "
        "`min_interval_ms`; at most `max_lag_s` (a healthy idle source polled less often would fail its "
        "freshness check between polls)",
    )
    max_lag_s: StrictFloat = Field(
        default=30.0,
        ge=1,
        le=7 * 86_400,
        description="the freshness check (and `event-ingest status --check`) fails when the source was last "
        "polled successfully longer ago than this",
    )
    headers: Headers = Field(
        default=(),
        json_schema_extra={"default": {}},  # as the file spells "none" (the resolved form is a tuple)
        description="request headers sent with every request; a value is a string or `{env: VARIABLE}`, read "
        "from the environment when the file is loaded (a missing variable is one error naming file, "
        "source, header and variable). Values are never shown: `***` in logs, errors, "
        "`repr`/`to_dict`, CLI output and Dagster metadata, even when the source echoes them back. "
        "`Host`, `Content-Length`, `Accept-Encoding` and other transport headers cannot be set",
    )
    ca_file: str | None = Field(
        default=None,
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
        return check_ca_file(raw, info.data.get("url"), base_dir)  # no url: its own error is reported

    @model_validator(mode="after")
    def _polled_within_its_lag(self) -> SourceConfig:
        if self.idle_poll_ms is not None and self.idle_poll_ms > self.max_lag_s * 1000:
            raise FieldProblem(
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
        default=25, ge=1, le=1000, description="one `ingest` run process hosts up to this many sources, one thread each"
    )
    run_seconds: StrictFloat = Field(
        default=1800.0, ge=60, le=7 * 86_400, description="a run hands its sources to a successor after this long"
    )
    handoff_s: StrictFloat = Field(
        default=60.0,
        ge=5,
        le=3600,
        description="the successor is asked for this long before: it must be up and waiting by then; at most "
        "half of `run_seconds`",
    )
    lease_ttl_s: StrictFloat = Field(
        default=LEASE_TTL_S,
        ge=1,
        le=600,
        description="a dead run's (or server's) sources are taken over within about this long",
    )
    report_every_s: StrictFloat = Field(
        default=20.0, ge=1, le=3600, description="progress and checks of each source reach Dagster at most this often"
    )
    sensor_interval_s: StrictInt = Field(
        default=10,
        ge=5,
        le=30,
        description="each source's sensor ticks this often: how soon a crashed run is replaced, a successor asked "
        "for, a paused source taken up again; each tick costs Dagster's daemon, code server and storage some CPU, "
        "so with hundreds of sources tick less often (keep it well under `handoff_s`)",
    )
    idle_exit_s: StrictFloat = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="a run left with nothing to host (every one of its sources' sensors stopped) ends after this long",
    )

    @model_validator(mode="after")
    def _handoff_fits_in_a_run(self) -> RunSettings:
        if self.handoff_s * 2 > self.run_seconds:
            raise FieldProblem(
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
                raise FieldProblem(("sources", index, "name"), "duplicate source name")
            seen.add(source.name)
        return self

    def source(self, name: str) -> SourceConfig:
        return find_source(self.sources, name)


def find_source(sources: list[SourceConfig], name: str) -> SourceConfig:
    for source in sources:
        if source.name == name:
            return source
    known = ", ".join(s.name for s in sources) or "none"
    raise ConfigError(f"source {name!r} is not configured (configured: {known})")


def sources_schema() -> dict[str, Any]:
    """The JSON schema of the sources file (committed as sources.schema.json, for editors)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **IngestConfig.model_json_schema()}


# ---- where an error is, in words: what wording.one_line needs from the declaration ----------------------


def where_in_code(model: type[BaseModel], data: Mapping[str, Any]) -> str | None:
    """Where a model built in code (not read from a file) is, in words."""
    if model is SourceConfig:
        name = data.get("name")
        return f"source {name!r}" if is_valid_source_name(name) else "source"
    return "runs" if model is RunSettings else None


def _name_of(raw: Any) -> Any:
    return raw.get("name") if isinstance(raw, Mapping) else getattr(raw, "name", None)


def locate(
    model: type[BaseModel], document: Any, where: str | None, loc: Loc
) -> tuple[type[BaseModel], str | None, Loc]:
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
