"""One sensor per source. Running, it keeps its source hosted by a live `ingest` run; stopped
(from the UI), the run hosting the source lets go of it within two minutes (hosting.py).

Each tick: is the source hosted by a live run of this instance that is not retiring? Then
nothing to do. Is a run for its slot on its way (queued, starting, or started but not yet
heartbeating)? Wait for it. Otherwise ask for one: that is how the first run starts, how a
retiring run gets its successor in time, and how a dead run is replaced.

Every sensor of a slot comes to "ask" at about the same moment (at the start, at each handoff), and
the daemon evaluates several at once, before any of their runs exists in Dagster's storage: each
would ask, and a slot would get two to four runs where it needs one (measured at 50 sources: 6
`ingest` runs for 2 slots, 4 of them ending within the window, each a process start and a handoff).
So the one that asks first claims the slot in Redis (``SET NX``, ``SLOT_CLAIM_TTL_S``); the others
skip while the claim lives, by which time the run it asked for is in storage and they wait for it.
A claim whose run never appeared lapses, and the next tick asks again.

A tick reads Redis heartbeats and, unless the run its cursor names still hosts the source (the
common case: then Redis alone answers), Dagster's run records; nothing else: it cannot be slowed
by a big events table, and publishes nothing (the runs publish progress and checks).
"""

import time
from dataclasses import dataclass

import dagster as dg
import redis

from ..config import IngestConfig, SourceConfig, redact_url
from ..core.worker import Heartbeat, read_heartbeats, slot_members, slot_of
from .hosting import mark_wanted
from .ingest_job import ACTIVE_STATUSES, RUN_SLOT_TAG, SLOT_TAG, SOURCES_TAG
from .names import Names
from .resources import IngestResource, sensor_ingest

SLOT_CLAIM_PREFIX = "event-ingest:slot-claim:"  # + "<job>/<slot>": which sensor asked for the slot's next run
SLOT_CLAIM_TTL_S = 30  # longer than creating a run takes; far shorter than a run's life

# A run that is STARTED but has not heartbeated for this long is taken for dead (it never got going).
STARTUP_GRACE_S = 180


@dataclass(frozen=True)
class RunView:
    """What a sensor needs to know of an active `ingest` run."""

    run_id: str
    slot: int | None
    status: dg.DagsterRunStatus
    started_age_s: float | None  # seconds since it started; None before


def hosted_by(source: str, beat: Heartbeat | None) -> bool:
    """A live run (its heartbeat in Redis) hosts the source and is not retiring: nothing for a sensor to do."""
    return beat is not None and source in beat.hosting and not beat.retiring


def decide(
    source: str, slot: int, runs: list[RunView], beats: dict[str, Heartbeat], startup_grace_s: float = STARTUP_GRACE_S
) -> tuple[bool, str]:
    """(ask for a run?, why). Pure: tested without Dagster's daemon."""
    live = [(run, beats[run.run_id]) for run in runs if run.run_id in beats]
    for run, beat in live:
        if hosted_by(source, beat):
            return False, f"hosted by run {run.run_id[:8]}"
    for run, beat in live:
        if source in beat.members and not beat.retiring:
            return False, f"run {run.run_id[:8]} holds its slot and takes the source up on its next look"
    for run in runs:
        if run.slot != slot or run.run_id in beats:
            continue
        if run.status != dg.DagsterRunStatus.STARTED:
            return False, f"run {run.run_id[:8]} for slot {slot} is {run.status.value}"
        if (run.started_age_s or 0.0) < startup_grace_s:
            return False, f"run {run.run_id[:8]} for slot {slot} is starting"
    retiring = [run.run_id[:8] for run, beat in live if source in beat.hosting and beat.retiring]
    if retiring:
        return True, f"run {retiring[0]} is retiring: asking for its successor"
    return True, "no live run hosts it"


def claim_slot(client: redis.Redis, slot_key: str, sensor: str) -> tuple[bool, str]:
    """(this sensor may ask for the slot's run, the sensor that claimed it). One claim per slot at a time."""
    key = SLOT_CLAIM_PREFIX + slot_key
    if client.set(key, sensor, nx=True, px=SLOT_CLAIM_TTL_S * 1000):
        return True, sensor
    holder = client.get(key)
    if isinstance(holder, bytes):
        holder = holder.decode()
    return False, holder or "another"


def _run_views(instance: dg.DagsterInstance, job_name: str) -> list[RunView]:
    now = time.time()
    views = []
    for record in instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, statuses=ACTIVE_STATUSES)):
        run = record.dagster_run
        slot = run.tags.get(SLOT_TAG)
        views.append(
            RunView(
                run_id=run.run_id,
                slot=int(slot) if slot is not None and slot.isdigit() else None,
                status=run.status,
                started_age_s=(now - record.start_time) if record.start_time else None,
            )
        )
    return views


def build_source_sensor(
    source: SourceConfig, config: IngestConfig, job: dg.JobDefinition, names: Names = Names()
) -> dg.SensorDefinition:
    source_names = [s.name for s in config.sources]
    per_run = config.runs.sources_per_run
    slot = slot_of(source_names, per_run, source.name)
    members = slot_members(source_names, per_run, slot)
    # A run that is never handed over still ends: twice its planned life, then run monitoring.
    max_runtime = int(config.runs.run_seconds * 2 + 600)
    sensor_name = names.source_sensor(source.name)

    @dg.sensor(
        name=sensor_name,
        job=job,
        minimum_interval_seconds=config.runs.sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        # No required_resource_keys: a declared resource opens a Dagster instance every tick (sensor_ingest).
        description=f"Keeps source {source.name!r} hosted by a live `{job.name}` run (slot {slot}). Stop it to "
        "pause the source: the run hosting it lets go within two minutes.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason | dg.RunRequest:
        return _tick(context, sensor_ingest(context, names))

    def _tick(context: dg.SensorEvaluationContext, ingest: IngestResource) -> dg.SkipReason | dg.RunRequest:
        try:
            client = ingest.shared_redis()
            # First: the mark says the sensor runs, whatever else this tick runs into.
            mark_wanted(client, source.name, sensor_name)
            # Most ticks find the source where the last one did: the run named in the cursor, still
            # heartbeating and hosting it. Then Redis alone answers, and Dagster's run storage is not asked.
            known = context.cursor
            if known and hosted_by(source.name, read_heartbeats(client, [known]).get(known)):
                return dg.SkipReason(f"hosted by run {known[:8]}")
            runs = _run_views(context.instance, job.name)
            beats = read_heartbeats(client, [r.run_id for r in runs])
        except redis.RedisError as exc:
            raise RuntimeError(
                f"cannot reach Redis at {redact_url(ingest.redis_url)} (the wanted mark, heartbeats): {exc}"
            ) from None
        host = next((r.run_id for r in runs if hosted_by(source.name, beats.get(r.run_id))), None)
        if host is not None and host != known:
            context.update_cursor(host)
        ask, why = decide(source.name, slot, runs, beats)
        if not ask:
            return dg.SkipReason(why)
        try:
            claimed, by = claim_slot(client, f"{job.name}/{slot}", sensor_name)
        except redis.RedisError as exc:
            raise RuntimeError(
                f"cannot reach Redis at {redact_url(ingest.redis_url)} (the slot claim): {exc}"
            ) from None
        if not claimed:
            return dg.SkipReason(f"{why}; sensor {by} asked for slot {slot}'s run moments ago")
        context.log.info(f"asking for a {job.name} run for slot {slot}: {why}")
        return dg.RunRequest(
            run_config={"ops": {names.of("host_sources"): {"config": {"slot": slot}}}},
            tags={
                SLOT_TAG: str(slot),
                RUN_SLOT_TAG: f"{job.name}/{slot}",
                SOURCES_TAG: ",".join(members)[:200],
                "dagster/max_runtime": str(max_runtime),
            },
        )

    return _sensor
