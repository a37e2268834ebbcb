"""The `ingest` job: one long-lived run hosts one slot of sources (up to `runs.sources_per_run`).

The run is glue around :class:`event_ingest.core.worker.Worker`. What it adds from Dagster:

* which of its sources to host: those whose sensor is running (hosting.py: the sensors renew a mark
  in Redis; a stopped sensor, or a source removed from the configuration, lets its mark expire), not
  those a newer `ingest` run of this job already stands by for (a handoff);
* progress: each source's window report becomes a materialization of its `events` partition
  (events, cursor, lag, row count) at most every `runs.report_every_s` - never one event-log row per
  page;
* at its start, a warning in its log when a source it hosts looks renamed (renames.py).

Drain-level log lines go to the run's stderr (its compute log in the UI), not to the event
log: 50 sources x 5 pages/s must not become 250 event-log rows a second.
"""

import logging
import os
import sys
import time
from collections.abc import Callable

import dagster as dg
import redis

from ..config import IngestConfig
from ..core import DrainStatus, Store, StoreError
from ..core.worker import SourceReport, Worker, WorkerOptions, read_heartbeats, slot_members, sources_to_host
from .checks import evaluate_checks
from .hosting import WANTED_TTL_S, sensors_ticking, wanted
from .metadata import progress_metadata
from .names import Names
from .renames import warn_of_renames
from .resources import IngestResource, ingest_of

SLOT_TAG = "event_ingest/slot"  # the slot's number within its job
# The slot across every instance in the Dagster deployment (`<job>/<slot>`): dagster.yaml's per-slot run
# limit counts on this one, so two instances' slot 0 are two slots.
RUN_SLOT_TAG = "event_ingest/run_slot"
SOURCES_TAG = "event_ingest/sources"

ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

# Re-read the instance (newer runs: a successor standing by) and the sensors' marks at most this often; a worker
# polls every second. A successor seen a few seconds later only lengthens the overlap: the old run drains meanwhile.
PLAN_REFRESH_S = 5.0
# Whether the sensor daemon is alive (so a lapsed mark can be believed) changes slowly: its beat is every 30 s.
DAEMON_CHECK_S = 30.0
# Publish an unchanged check result again this often (fresh metadata), never every window.
CHECK_REPUBLISH_S = 300
NOT_WANTED = (
    f"not wanted: its sensor has not ticked for {WANTED_TTL_S} s while the sensor daemon ran (stopped in the UI, "
    "or the source removed from the configuration)"
)


class IngestRunConfig(dg.Config):
    slot: int = 0


def report_metadata(report: SourceReport, row_count: int | None) -> dict:
    """What the UI plots for each progress materialization of a partition."""
    return progress_metadata(
        report.counts,
        window_s=float(report.window_s),
        state=report.state,
        caught_up=report.caught_up,
        **{"dagster/table_name": "events", "dagster/row_count": row_count},
        cursor=report.cursor,
        epoch=report.epoch,
        lag_p50_s=report.lag_p50_s,
        lag_p99_s=report.lag_p99_s,
        lag_max_s=report.lag_max_s,
        last_error=report.last_error or None,
    )


class _Plan:
    """Answers the worker's "what should I host now?" from the sensors' marks and the instance, cached briefly."""

    def __init__(self, context: dg.OpExecutionContext, members: list[str], redis_client: redis.Redis):
        self.context = context
        self.members = members
        self.redis = redis_client
        self._cached_at = -1e9
        self._daemon_checked_at = -1e9
        self._daemon_alive = False
        self.unwanted: set[str] = set()
        self._peer_ids: list[str] = []

    def __call__(self, worker: Worker) -> set[str]:
        now = time.monotonic()
        if now - self._cached_at >= PLAN_REFRESH_S:
            # A mark that lapsed while the sensor daemon is down says nothing about its source: then keep
            # what was decided while the sensors ticked (paused stays paused) and host the rest.
            if now - self._daemon_checked_at >= DAEMON_CHECK_S:
                self._daemon_alive = sensors_ticking(self.context.instance)
                self._daemon_checked_at = now
            if self._daemon_alive:
                self.unwanted = set(self.members) - wanted(self.redis, self.members)
            self._peer_ids = self._peer_runs()
            self._cached_at = now
        peers = read_heartbeats(self.redis, self._peer_ids).values() if self._peer_ids else ()
        return sources_to_host(self.members, paused=self.unwanted, configured=None, me=worker.heartbeat, peers=peers)

    def _peer_runs(self) -> list[str]:
        records = self.context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=self.context.job_name, statuses=[dg.DagsterRunStatus.STARTED])
        )
        return [r.dagster_run.run_id for r in records if r.dagster_run.run_id != self.context.run_id]


class _Publisher:
    """Turns the worker's window reports into Dagster events, at a bounded rate:

    * a materialization of the source's `events` partition for every window that stored events;
    * the source's checks (O(1) queries), published when a result changes or every few minutes;
    * for each source of the slot its sensor no longer keeps wanted (stopped, removed), `fresh` as
      failed ("not wanted"), whether or not it was hosted: the window reports do not list a host
      once it has stopped, and a source paused before the run began never had one;
    * one log line per window for the whole run.
    """

    def __init__(
        self, context: dg.OpExecutionContext, ingest: IngestResource, sources: dict, plan: "_Plan", names: Names
    ):
        self.context = context
        self.names = names
        self.ingest = ingest
        self.sources = sources
        self.plan = plan
        self.published: dict[tuple[str, str], tuple[bool, float]] = {}

    def __call__(self, reports: list[SourceReport]) -> None:
        with self.ingest.store() as store:
            counts = store.row_counts([r.source for r in reports if r.counts.events_stored])
            for r in reports:
                if r.counts.events_stored:
                    self.context.log_event(
                        dg.AssetMaterialization(
                            asset_key=self.names.events,
                            partition=r.source,
                            metadata=report_metadata(r, counts.get(r.source)),
                            description=f"{r.counts.events_stored} events in {r.window_s:g} s",
                        )
                    )
                self._checks(store, r)
        for name in sorted(self.plan.unwanted):
            self._publish(
                name,
                {
                    "fresh": dg.AssetCheckResult(
                        passed=False, description=NOT_WANTED, metadata={"note": "paused (sensor stopped) or removed"}
                    )
                },
            )
        states: dict[str, int] = {}
        for r in reports:
            states[r.state] = states.get(r.state, 0) + 1
        troubled = [
            f"{r.source}: {r.last_error}"
            for r in reports
            if r.counts.errors or set(r.counts.drain_ends) - {DrainStatus.STOPPED}
        ]
        self.context.log.info(
            f"{sum(r.counts.events_stored for r in reports)} events from {len(reports)} sources "
            f"in {reports[0].window_s:g} s "
            f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))})"
            + (f"; trouble: {'; '.join(troubled[:5])}" if troubled else "")
            if reports
            else "hosting nothing"
        )

    def _checks(self, store: Store, report: SourceReport) -> None:
        if report.state == "stopped" or report.source in self.plan.unwanted:
            return  # handed over (the next host publishes), or not wanted (published as such)
        source = self.sources[report.source]
        try:
            results = evaluate_checks(store, source)
        except StoreError as exc:
            self.context.log.warning(f"checks of {source.name} not evaluated: {exc}")
            return
        self._publish(source.name, results)

    def _publish(self, source: str, results: dict[str, dg.AssetCheckResult]) -> None:
        now = time.monotonic()
        for name, result in results.items():
            last = self.published.get((source, name))
            if last is not None and last[0] == result.passed and now - last[1] < CHECK_REPUBLISH_S:
                continue
            self.context.log_event(
                # log_event takes check evaluations (Dagster 1.13); its annotation leaves them out.
                dg.AssetCheckEvaluation(  # type: ignore[arg-type]
                    asset_key=self.names.events,
                    check_name=name,
                    passed=result.passed,
                    partition=source,
                    metadata=result.metadata,
                    severity=result.severity,
                    description=result.description,
                )
            )
            self.published[(source, name)] = (result.passed, now)


def _stderr_logger(run_id: str) -> logging.Logger:
    logger = logging.getLogger(f"event_ingest.run.{run_id[:8]}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def build_ingest_job(
    config: IngestConfig, names: Names = Names(), configured: Callable[[], set[str]] | None = None
) -> dg.JobDefinition:
    """``configured``: every source name configured in this code location now (for the rename warning);
    by default this instance's own."""
    by_name = {s.name: s for s in config.sources}
    source_names = [s.name for s in config.sources]
    per_run = config.runs.sources_per_run
    config_runs = config.runs

    @dg.op(
        name=names.of("host_sources"),  # op names are unique in a code location, like job names
        description="Host one slot of sources: tail each, hand over to a successor run.",
        required_resource_keys={names.resource_key},
    )
    def host_sources(context: dg.OpExecutionContext, config: IngestRunConfig) -> None:
        ingest = ingest_of(context, names)
        members = slot_members(source_names, per_run, config.slot)
        if not members:
            raise dg.Failure(
                description=f"slot {config.slot} holds no source ({len(source_names)} sources, {per_run} per run)"
            )
        # Before prepare(): a renamed source is one without state yet.
        warn_of_renames(ingest, configured() if configured else set(source_names), members, context.log)
        ingest.prepare(members)
        redis_client = ingest.redis()
        log = _stderr_logger(context.run_id)
        plan = _Plan(context, members, redis_client)

        publisher = _Publisher(context, ingest, by_name, plan, names)
        worker = Worker(
            context.run_id,
            [by_name[m] for m in members],
            database_url=ingest.database_url,
            redis_client=redis_client,
            options=WorkerOptions.from_settings(config_runs),
            report=publisher,
            logger=log,
        )
        context.log.info(f"hosting slot {config.slot}: {', '.join(members)} (pid {os.getpid()})")
        try:
            reason = worker.run(plan)
        finally:
            redis_client.close()
        context.log.info(f"ended: {reason}")

    @dg.job(
        name=names.of("ingest"),
        description="Long-lived ingest: one run hosts one slot of sources, tails them, and hands them to its "
        "successor without a pause. Started by the sources' sensors.",
        executor_def=dg.in_process_executor,
    )
    def ingest():
        host_sources()

    return ingest
