"""The one retry policy of a drain, as a pure function of the failed attempt.

Transient failures back off exponentially (with jitter) and retry through the gate; a ``Retry-After``
is honoured by the gate itself (the close that saw it moved every consumer's next slot), so the drain
asks again at once; retrying cannot fix a fatal answer (a 4xx, a redirect, an untrusted certificate).
Only requests that were sent count as attempts: the client asks again for a slot given back unsent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..config import SourceConfig
from .client import Kind, Outcome
from .progress import DrainOptions


@dataclass(frozen=True)
class Verdict:
    """What follows a failed attempt."""

    give_up: str | None = None  # the drain ends (source_error), for this reason
    retry_after_s: float = 0.0  # the source asked for this pause (the gate holds everyone back)
    backoff_s: float = 0.0  # sleep this long before the next attempt
    transient: bool = True  # worth a warning line (a fatal answer ends the drain at once)


def after_failure(
    source: SourceConfig,
    outcome: Outcome,
    attempt: int,
    *,
    cursor: int,
    budget_left_s: float,
    opts: DrainOptions,
) -> Verdict:
    """The verdict after failed attempt number ``attempt`` (from 1) at ``cursor``."""
    where = f"source {source.name!r} at lastId={cursor}"
    if outcome.kind is Kind.FATAL:
        return Verdict(give_up=f"{where}: {outcome.reason}", transient=False)
    if attempt >= source.max_attempts:
        return Verdict(give_up=f"{where}: {source.max_attempts} attempts failed, last: {outcome.reason}")
    if outcome.retry_after_s is not None:
        wait = outcome.retry_after_s
        late = f"source {source.name!r} asked to wait {wait:g}s (Retry-After)" if wait > budget_left_s else None
        return Verdict(give_up=late, retry_after_s=wait)
    delay = min(opts.backoff_max_s, opts.backoff_base_s * 2 ** (attempt - 1))
    return Verdict(backoff_s=delay * random.uniform(0.5, 1.0))
