"""The module Dagster loads (workspace.yaml, `dagster dev -m event_ingest.defs.definitions`)."""

from ..config import load_sources
from . import build_definitions

defs = build_definitions(load_sources())
