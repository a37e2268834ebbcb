"""The exit codes of the ``event-ingest`` command and its tooling commands (``dev``, ``bench``, ``chaos``).

0 success; 1 the work ended badly (a source error, a fenced drain, a drain stuck before an item it cannot
read, lost events, a skip or requeue that could not be done now) or, for ``status --check``, a source is
late; 2 bad configuration, a refused request or unreachable Postgres/Redis.
"""

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
