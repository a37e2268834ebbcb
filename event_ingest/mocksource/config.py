"""Mock source start-up config, and the part of it POST /control may change at runtime.

Each runtime field has one validator, used for the config and for /control alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Ids are stored as BIGINT downstream; refusing larger cursors keeps seed mode
# from ever emitting ids no consumer could store.
MAX_ID = 2**63 - 1


def _check_rate(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number between 0 and 1")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{key} must be between 0 and 1, got {value!r}")
    return float(value)


def _check_non_negative(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a non-negative number")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    return float(value)


def _check_non_negative_int(key: str, value: Any) -> int:
    # Retry-After is delta-seconds in HTTP, which is an integer.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def _check_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key} must be true or false, got {value!r}")


def check_seed(key: str, value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{key} must be an integer or null, got {value!r}")


# Settings that may be changed on a running server via POST /control, with the
# validator used both for the config and for /control so the two cannot drift.
RUNTIME_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "error_rate": _check_rate,
    "rate_limit_rate": _check_rate,
    "malformed_rate": _check_rate,
    "latency_ms": _check_non_negative,
    "retry_after_s": _check_non_negative_int,
    "min_interval_ms": _check_non_negative,
    "producing": _check_bool,
}


@dataclass
class MockSourceConfig:
    """Everything a mock source needs at start-up.

    Modes: ``backlog`` and ``rate`` combine (ids 1..backlog exist at start, the
    producer appends more); ``seed_batch`` is the original PHP mocks' endless
    stream and excludes the other two.
    """

    name: str = "mock"
    host: str = "127.0.0.1"
    port: int = 0  # 0 = let the OS pick a free port
    backlog: int = 0  # ids 1..backlog exist at start
    rate: float = 0.0  # live producer, events per second (0 = off)
    producing: bool = True  # live producer running (pause with /control {"producing": false})
    seed_batch: int | None = None  # seed mode: every answer is exactly K new events
    error_rate: float = 0.0  # fraction of /events answered 500
    latency_ms: float = 0.0  # added before answering each /events request
    rate_limit_rate: float = 0.0  # fraction answered 429 + Retry-After
    retry_after_s: int = 1  # Retry-After value on those 429s
    malformed_rate: float = 0.0  # fraction answered 200 with truncated JSON
    random_seed: int | None = None  # seeds fault decisions, for reproducible runs
    min_interval_ms: float = 200.0  # recorder threshold for "too close" gaps
    max_limit: int = 10_000  # larger ?limit= values are capped to this
    tls_cert_file: str | None = None  # PEM certificate (chain): serve HTTPS
    tls_key_file: str | None = None  # its private key

    def validate(self) -> None:
        """Raise ValueError describing the first invalid field."""
        if not self.name:
            raise ValueError("name must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.backlog < 0 or self.backlog > MAX_ID:
            raise ValueError(f"backlog must be >= 0, got {self.backlog}")
        _check_non_negative("rate", self.rate)
        if self.seed_batch is not None:
            if self.seed_batch < 1:
                raise ValueError(f"seed_batch must be >= 1, got {self.seed_batch}")
            if self.backlog or self.rate:
                # Seed mode invents events from the client's cursor, so a backlog
                # or producer would be silently ignored: refuse instead.
                raise ValueError("seed_batch cannot be combined with backlog or rate")
        if self.max_limit < 1:
            raise ValueError(f"max_limit must be >= 1, got {self.max_limit}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        for key, check in RUNTIME_FIELDS.items():
            check(key, getattr(self, key))
        check_seed("random_seed", self.random_seed)
        RuntimeSettings.from_config(self).check_total()


@dataclass(frozen=True)
class RuntimeSettings:
    """The mutable-at-runtime part of the config (swapped atomically)."""

    error_rate: float
    rate_limit_rate: float
    malformed_rate: float
    latency_ms: float
    retry_after_s: int
    min_interval_ms: float
    producing: bool

    @classmethod
    def from_config(cls, config: MockSourceConfig) -> RuntimeSettings:
        return cls(**{key: getattr(config, key) for key in RUNTIME_FIELDS})

    def check_total(self) -> None:
        # One random draw per request picks at most one fault, so the fractions
        # are exact only if they fit in [0, 1] together.
        total = self.error_rate + self.rate_limit_rate + self.malformed_rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"error_rate + rate_limit_rate + malformed_rate must be <= 1, got {total:g}")
