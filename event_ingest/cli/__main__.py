"""``python -m event_ingest.cli ARGS``: the ``event-ingest`` command."""

import sys

from .main import main

sys.exit(main())
