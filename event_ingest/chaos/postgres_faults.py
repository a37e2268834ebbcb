"""Postgres faults: a restart under running drains, and the consumers' connections terminated."""

from __future__ import annotations

import time
from collections.abc import Callable

from .rig import Rig, start_again


class PostgresFaults:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def injectors(self) -> dict[str, Callable[[], str | None]]:
        return {"postgres_restart": self.postgres_restart, "pg_terminate_backend": self.pg_terminate_backend}

    def postgres_restart(self) -> str:
        self.rig.pg.stop()
        down_s = self.rig.rng.uniform(0.5, 2.0)
        time.sleep(down_s)
        start_again(self.rig.pg, "postgres")
        return f"postgres stopped (fast shutdown), down {down_s:.1f}s, started again"

    def pg_terminate_backend(self) -> str | None:
        for _ in range(30):
            rows = self.rig.sql(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                ("event-ingest%",),
            )
            if rows[0][0]:
                return f"terminated {rows[0][0]} consumer connections"
            time.sleep(0.1)
        return None
