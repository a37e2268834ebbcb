"""The faults: one injector per kind, grouped by what they break, each returning what it did (None: not
injected, tried again later).

``process_faults`` (consumers SIGKILLed or SIGSTOPped past their lease), ``redis_faults`` (a restart,
and state lost while a source holds a response), ``postgres_faults`` and ``source_faults`` (one-shot
responses). Each family owns the figures its trials produce; ``Faults`` owns what was injected, when.
All of them are handed the ``Rig``, never the harness.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .plan import FAULT_KINDS
from .postgres_faults import PostgresFaults
from .process_faults import ProcessFaults
from .redis_faults import RedisFaults
from .rig import Rig
from .source_faults import SourceFaults

log = logging.getLogger("event_ingest.chaos")


class Faults:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.process = ProcessFaults(rig)
        self.redis = RedisFaults(rig)
        self.postgres = PostgresFaults(rig)
        self.source = SourceFaults(rig)
        self._injectors: dict[str, Callable[[], str | None]] = {
            **self.process.injectors(),
            **self.redis.injectors(),
            **self.postgres.injectors(),
            **self.source.injectors(),
        }
        if set(self._injectors) != set(FAULT_KINDS):
            raise RuntimeError(f"fault kinds and injectors differ: {sorted(set(FAULT_KINDS) ^ set(self._injectors))}")
        self.injected: Counter[str] = Counter({k: 0 for k in FAULT_KINDS})
        self.fault_log: list[dict[str, Any]] = []

    def inject(self, kind: str) -> bool:
        began = time.monotonic()
        t = began - self.rig.started
        try:
            detail = self._injectors[kind]()
        except Exception as exc:  # a fault that failed to inject is reported, the run goes on
            log.warning("chaos: %s could not be injected: %s: %s", kind, type(exc).__name__, exc)
            detail = None
        if detail is None:
            log.warning("chaos: t=%5.1fs %s not injected", t, kind)
            return False
        self.injected[kind] += 1
        # "from"/"until": this host's monotonic clock, the one the sources stamp arrivals on.
        self.fault_log.append(
            {"t": round(t, 2), "kind": kind, "detail": detail, "from": began, "until": time.monotonic()}
        )
        log.info("chaos: t=%5.1fs %s: %s", t, kind, detail)
        return True
