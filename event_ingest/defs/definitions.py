"""The module Dagster loads (workspace.yaml, `dagster dev -m event_ingest.defs.definitions`).

Nothing is read at import: Dagster calls ``defs()`` when it loads the code location, so a
reload picks up an edited sources file (new sources get a partition, a sensor and checks).
"""

import dagster as dg

from ..config import load_config, sources_path
from . import build_definitions


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_config(), sources_file=sources_path())
