"""What the handler threads of one running mock source share."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from event_ingest.mocksource.config import MockSourceConfig
from event_ingest.mocksource.eventstore import EventStore
from event_ingest.mocksource.faults import Faults
from event_ingest.mocksource.recorder import Recorder


class SourceState:
    """Everything the handler threads share for one running source."""

    def __init__(self, config: MockSourceConfig) -> None:
        self.config = config
        self.store = EventStore(
            config.name, config.backlog, config.seed_batch, config.rate, lambda: self.faults.settings.producing
        )
        self.faults = Faults(config)
        self.recorder = Recorder()
        # Set on stop: wakes handlers sleeping in latency/delay/slowloris.
        self.stopping = threading.Event()

    def control(self, changes: Mapping[str, Any]) -> None:
        # Events due before a pause (or a resume) exist; none are made for the time in between.
        self.store.settle()
        self.faults.control(changes)
        self.store.settle()

    def stats(self, include_ids: bool, include_arrivals: bool = False) -> dict[str, Any]:
        stats = self.recorder.snapshot(self.faults.settings.min_interval_ms, include_ids, include_arrivals)
        stats["name"] = self.config.name
        stats["produced_max_id"] = self.store.max_id()
        return stats
