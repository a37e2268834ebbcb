"""Source faults: one-shot responses (``POST /control {"next": [...]}``), consumed by whichever request
comes next: 5xx bursts, timeouts and a slowloris body, connection resets, a 429 with Retry-After, and
malformed bodies and hostile items that must all end in quarantine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .plan import SOURCE_TIMEOUT_S
from .rig import Rig


class SourceFaults:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.requests_during_retry_after = 0
        self.markers: list[tuple[str, str]] = []  # (source, marker) of every malformed thing injected
        self._malformed_sent = 0

    def injectors(self) -> dict[str, Callable[[], str | None]]:
        return {
            "burst_5xx": self.burst_5xx,
            "timeouts": self.timeouts,
            "resets": self.resets,
            "rate_limit_429": self.rate_limit_429,
            "malformed": self.malformed,
        }

    def _oneshots(self, shots: list[dict[str, Any]]) -> str | None:
        rig = self.rig
        mock = rig.rng.choice(rig.mocks)
        rig.http.post(mock.base_url + "/control", json={"next": shots}).raise_for_status()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not rig.http.get(mock.base_url + "/control").json()["queued"]:
                return mock.name
            time.sleep(0.05)
        rig.http.post(mock.base_url + "/control", json={"clear_next": True})
        return None

    def burst_5xx(self) -> str | None:
        statuses = [self.rig.rng.choice([500, 502, 503, 504]) for _ in range(self.rig.rng.randint(2, 4))]
        at = self._oneshots([{"kind": "status", "status": s} for s in statuses])
        return at and f"{at} answered {statuses}"

    def timeouts(self) -> str | None:
        shot: dict[str, Any]
        if self.rig.rng.random() < 0.5:
            shot = {"kind": "delay_then", "delay_ms": int(SOURCE_TIMEOUT_S * 1000 * 1.5)}
            what = "a response held past the client timeout"
        else:
            shot = {"kind": "slow_body", "content_length": 100_000, "interval_ms": 250, "duration_s": 4}
            what = "a body dribbled a byte per 250 ms (slowloris)"
        at = self._oneshots([shot])
        return at and f"{at} sent {what}"

    def resets(self) -> str | None:
        n = self.rig.rng.randint(1, 3)
        at = self._oneshots([{"kind": "reset"}] * n)
        return at and f"{at} reset {n} connections"

    def rate_limit_429(self) -> str | None:
        seconds = self.rig.rng.randint(1, 2)
        at = self._oneshots([{"kind": "status", "status": 429, "headers": {"Retry-After": str(seconds)}}])
        if at is None:
            return None
        # The 429 was answered before now (its one-shot is gone), so every consumer must keep off this
        # source for the next `seconds`, less a margin for how late the harness may have noticed.
        mock = self.rig.mock(at)
        quiet_until = time.monotonic() + seconds - 0.3
        before = self.rig.mock_stats(mock)["requests"]
        time.sleep(max(quiet_until - time.monotonic(), 0.0))
        early = self.rig.mock_stats(mock)["requests"] - before
        self.requests_during_retry_after += early
        return f"{at} answered 429 Retry-After: {seconds}; {early} requests came back before it ran out"

    def malformed(self) -> str | None:
        self._malformed_sent += 1
        mark = f"chaos-{self.rig.seed}-{self._malformed_sent}"  # unique: found again in quarantine.raw
        hostile = [
            {"payload": {"chaos": f"{mark}-noid"}},
            {"id": f"{mark}-strid", "payload": {}},
            {"id": None, "payload": f"{mark}-nullid"},
            {"id": 1.5, "payload": f"{mark}-floatid"},
            {"id": True, "payload": f"{mark}-boolid"},
            {"id": -7, "payload": f"{mark}-negid"},
            f"{mark}-notobject",
        ]
        bodies = [
            f'{{"events": [{{"id": 1, "payload": {{"chaos": "{mark}-truncated"}}}}, {{"id": 2, "pay',
            f"<html><body>{mark}-html: 502 Bad Gateway</body></html>",
            f'{{"events": "{mark}-notalist"}}',
        ]
        shots: list[dict[str, Any]] = [{"kind": "body", "body": b} for b in self.rig.rng.sample(bodies, 2)]
        shots.append({"kind": "events", "events": hostile})
        at = self._oneshots(shots)
        if at is None:
            return None
        sent = " ".join(shot.get("body", "") for shot in shots)
        expected = [m for m in (f"{mark}-truncated", f"{mark}-html", f"{mark}-notalist") if m in sent]
        expected += [f"{mark}-{k}" for k in ("noid", "strid", "nullid", "floatid", "boolid", "negid", "notobject")]
        self.markers += [(at, m) for m in expected]
        # Wait until they are in quarantine, so later faults cannot blur what happened to them.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and missing_markers(self.rig, [(at, m) for m in expected]):
            time.sleep(0.1)
        return f"{at} sent 2 bodies that are not pages and a page of {len(hostile)} hostile items"


def missing_markers(rig: Rig, markers: list[tuple[str, str]]) -> list[str]:
    """The markers (of ``(source, marker)``) that no quarantined row of their source holds with a reason."""
    missing = []
    for source, marker in markers:
        rows = rig.sql(
            "SELECT count(*) FROM quarantine WHERE source = %s AND position(convert_to(%s, 'UTF8') in raw) > 0 "
            "AND length(reason) > 0",
            (source, marker),
        )
        if not rows[0][0]:
            missing.append(marker)
    return missing
