"""The project's own code location, built the way a user's is: the EventSources instance declared in
defs/event_sources/defs.yaml, loaded with Dagster's defs folder (`dg dev`, `dg check defs`, the code
server of docker-compose.yml: ``dagster api grpc -m event_ingest.definitions``).

Nothing is read at import: Dagster calls ``defs()`` when it loads the code location, so a reload
picks up an edited sources file (new sources get a partition, a sensor and checks).
"""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
