"""A running mock source's faults: runtime settings, the seeded RNG and the one-shot queue."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from event_ingest.mocksource.config import (
    RUNTIME_FIELDS,
    MockSourceConfig,
    RuntimeSettings,
    check_seed,
)
from event_ingest.mocksource.oneshots import OneShot, parse_oneshots


class Faults:
    """Runtime settings, the seeded RNG and the one-shot queue, under one lock."""

    def __init__(self, config: MockSourceConfig) -> None:
        self._initial = RuntimeSettings.from_config(config)
        self._initial_seed = config.random_seed
        self._settings = self._initial
        self._rng = random.Random(config.random_seed)
        self._queue: deque[OneShot] = deque()
        self._lock = threading.Lock()

    @property
    def settings(self) -> RuntimeSettings:
        return self._settings  # immutable snapshot; swapped whole under the lock

    def pop_next(self) -> OneShot | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def draw(self) -> str | None:
        """Pick at most one random fault for this request.

        A single draw per request (always consumed, even at rate 0) keeps runs
        with the same seed and request order reproducible.
        """
        with self._lock:
            s = self._settings
            roll = self._rng.random()
        for kind, rate in (
            ("error", s.error_rate),
            ("rate_limit", s.rate_limit_rate),
            ("malformed", s.malformed_rate),
        ):
            if roll < rate:
                return kind
            roll -= rate
        return None

    def control(self, changes: Mapping[str, Any]) -> None:
        """Apply a POST /control body: everything is validated before anything
        changes, so a bad request leaves the server as it was."""
        allowed = set(RUNTIME_FIELDS) | {"seed", "random_seed", "next", "clear_next", "reset"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown control keys {sorted(unknown)}")
        updates = {k: check(k, changes[k]) for k, check in RUNTIME_FIELDS.items() if k in changes}
        if "seed" in changes and "random_seed" in changes:
            raise ValueError("give seed or random_seed, not both")
        seed_key = "seed" if "seed" in changes else "random_seed"
        reseed = seed_key in changes
        seed = check_seed(seed_key, changes.get(seed_key))
        for flag in ("clear_next", "reset"):
            if not isinstance(changes.get(flag, False), bool):
                raise ValueError(f"{flag} must be true or false")
        shots = parse_oneshots(changes.get("next", []))
        with self._lock:
            base = self._initial if changes.get("reset") else self._settings
            settings = replace(base, **updates)
            settings.check_total()
            if changes.get("reset"):
                self._queue.clear()
                self._rng.seed(self._initial_seed)
            if changes.get("clear_next"):
                self._queue.clear()
            self._settings = settings
            if reseed:
                self._rng.seed(seed)
            self._queue.extend(shots)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"settings": asdict(self._settings), "queued": [s.kind for s in self._queue]}
