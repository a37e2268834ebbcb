"""``python -m event_ingest.mocksource --name a --port 0`` runs one mock source."""

from event_ingest.mocksource.cli import main

raise SystemExit(main())
