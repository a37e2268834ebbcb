"""Loading the sources file: read it, parse the YAML, validate it against the declaration.

Every failure is one ``ConfigError`` line naming the file (not found, unreadable, not YAML, and the
declaration's own problems, worded by ``wording``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .declaration import IngestConfig, SourceConfig, find_source, locate
from .env import DEFAULT_SOURCES_FILE, SOURCES_ENV
from .wording import ConfigError, one_line


def parse_config(document: Any, origin: str, base_dir: Path | None = None) -> IngestConfig:
    """Validate a parsed sources file; ``origin`` names it in errors, ``base_dir`` anchors relative paths."""
    if not isinstance(document, dict) or "sources" not in document:
        raise ConfigError(f"{origin}: expected a top-level 'sources:' list")
    try:
        return IngestConfig.model_validate(document, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(one_line(exc, partial(locate, IngestConfig, document, None), origin)) from None


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


@dataclass
class Settings:
    """Everything one drain needs to reach its services."""

    database_url: str
    redis_url: str
    sources: list[SourceConfig] = field(default_factory=list)

    def source(self, name: str) -> SourceConfig:
        return find_source(self.sources, name)
