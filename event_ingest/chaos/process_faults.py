"""Process faults: a consumer SIGKILLed at a checkpoint, or SIGSTOPped past its lease.

``stop_past_lease`` is a trial with a verdict of its own, read from Postgres, Redis and the sources:
a drain holding a fetched page is SIGSTOPped past its lease; the consumer that takes the source over
is held right after *its* fetch; the stale one is woken and commits. Postgres must show that its
commit moved neither the cursor nor a row (the taker has committed nothing yet, so only the fence's
epoch clause can refuse it), and Redis that its release left the taker's lease in place. A stop that
nobody took over in time is not counted.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from ..core.lease import KEY_PREFIX as LEASE_PREFIX
from .plan import LEASE_TTL_S
from .processes import Slot
from .rig import Rig


class ProcessFaults:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.fence_trials: list[dict[str, Any]] = []
        self.stops_not_taken_over = 0

    def injectors(self) -> dict[str, Callable[[], str | None]]:
        return {
            "kill_between_fetch_and_commit": self.kill_between_fetch_and_commit,
            "kill_between_commit_and_release": self.kill_between_commit_and_release,
            "stop_past_lease": self.stop_past_lease,
        }

    def _arm(self, phase: str, source: str | None = None, timeout: float = 15.0) -> tuple[Slot, dict] | None:
        """Leave an arm file for ``phase`` (of one source, or any); the drain that claims it holds there."""
        bus = self.rig.bus
        since = bus.mark()
        arm = self.rig.control_dir / (f"arm-{phase}@{source}" if source else f"arm-{phase}")
        arm.touch()

        def armed(worker: str, ev: dict) -> bool:
            return ev.get("ev") == "armed" and ev.get("phase") == phase and source in (None, ev.get("src"))

        found = bus.wait_for(armed, since, timeout)
        if found is None:
            try:
                arm.unlink()
                return None  # nobody reached that phase in time
            except FileNotFoundError:
                found = bus.wait_for(armed, since, 5.0)  # claimed at the last moment
                if found is None:
                    return None
        worker, ev = found
        return self.rig.consumers.slot(worker), ev

    def kill_between_fetch_and_commit(self) -> str | None:
        armed = self._arm("fetched")
        if armed is None:
            return None
        slot, ev = armed
        self.rig.consumers.kill(slot)
        return (
            f"{slot.name} SIGKILLed holding an uncommitted page of {ev['src']} ({ev['n']} events, epoch {ev['epoch']})"
        )

    def kill_between_commit_and_release(self) -> str | None:
        armed = self._arm("committed")
        if armed is None:
            return None
        slot, ev = armed
        self.rig.consumers.kill(slot)
        return f"{slot.name} SIGKILLed after a commit to {ev['src']} (cursor {ev['cursor']}), lease unreleased"

    def _source_now(self, source: str) -> dict[str, Any]:
        cursor, epoch, fenced = self.rig.sql(
            "SELECT cursor, epoch, fenced_commits FROM source_state WHERE source = %s", (source,)
        )[0]
        rows = self.rig.sql("SELECT count(*) FROM events WHERE source = %s", (source,))[0][0]
        client = self.rig.redis_client()
        try:
            lease = client.get(LEASE_PREFIX + source)
        finally:
            client.close()
        if isinstance(lease, bytes):
            lease = lease.decode()
        return {
            "cursor": cursor,
            "epoch": epoch,
            "rows": rows,
            "fenced_commits": fenced,
            "lease": lease or None,
        }

    def stop_past_lease(self) -> str | None:
        consumers = self.rig.consumers
        armed = self._arm("fetched")
        if armed is None:
            return None
        stale, ev = armed
        source, epoch = ev["src"], ev["epoch"]
        consumers.signal(stale, signal.SIGSTOP)
        stopped_at = time.monotonic()
        # The lease runs out; a standby takes the source over and fetches: hold it there, uncommitted.
        taken = self._arm("fetched", source=source, timeout=LEASE_TTL_S * 8)
        stopped_s = time.monotonic() - stopped_at
        if taken is None or taken[0] is stale or (taken[1]["epoch"] or 0) <= (epoch or 0):
            if taken is not None:
                consumers.release(taken[0].name, source)
            consumers.release(stale.name, source)
            consumers.signal(stale, signal.SIGCONT)
            self.stops_not_taken_over += 1
            return None  # no takeover, nothing tested: not counted
        taker, taker_ev = taken
        before = self._source_now(source)
        since = self.rig.bus.mark()
        consumers.release(stale.name, source)
        consumers.signal(stale, signal.SIGCONT)
        done = self.rig.bus.wait_for(
            lambda w, e: w == stale.name and e.get("ev") == "done" and e.get("src") == source, since, 15.0
        )
        after = self._source_now(source)
        consumers.release(taker.name, source)
        outcome = done[1]["status"] if done else "no answer"
        trial = {
            "source": source,
            "stale": stale.name,
            "stale_epoch": epoch,
            "taker": taker.name,
            "taker_epoch": taker_ev["epoch"],
            "stopped_s": round(stopped_s, 2),
            "stale_drain_ended": outcome,
            "before": before,
            "after": after,
            "commit_refused": done is not None and all(after[k] == before[k] for k in ("cursor", "epoch", "rows")),
            "lease_kept": before["lease"] is not None and after["lease"] == before["lease"],
        }
        self.fence_trials.append(trial)
        moved = (
            "moved nothing"
            if trial["commit_refused"]
            else (f"MOVED cursor {before['cursor']} -> {after['cursor']}, rows {before['rows']} -> {after['rows']}")
        )
        return (
            f"{stale.name} SIGSTOPped {stopped_s:.1f}s (lease TTL {LEASE_TTL_S:g}s) holding a page of {source} "
            f"(epoch {epoch}); {taker.name} took over (epoch {taker_ev['epoch']}) and was held after its fetch; "
            f"the stale drain, woken, ended {outcome} and {moved}; the taker's lease "
            f"{'kept' if trial['lease_kept'] else 'GONE'}"
        )
