"""The Dagster layer: thin glue over event_ingest.core, shipped as a component.

``EventSources`` (component.py) is what a Dagster project declares, in YAML or in Python;
``build_definitions`` (build.py) is what it builds: assets, checks, sensors, jobs, one module each.
"""

from .build import build_definitions
from .component import EventSources
from .names import Names
from .resources import IngestResource

__all__ = ["EventSources", "IngestResource", "Names", "build_definitions"]
