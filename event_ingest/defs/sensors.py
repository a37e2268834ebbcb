"""One sensor per source: keep its partition draining, one run at a time."""


import dagster as dg

ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def build_source_sensor(source: str, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"ingest_{source}",
        job=job,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests a drain of source {source!r} whenever no run for its partition is queued or running.",
    )
    def _sensor(context: dg.SensorEvaluationContext):
        active = context.instance.get_run_records(
            filters=dg.RunsFilter(tags={"dagster/partition": source}, statuses=ACTIVE_STATUSES),
            limit=1,
        )
        if active:
            run = active[0].dagster_run
            return dg.SkipReason(f"run {run.run_id[:8]} for {source} is {run.status.value}")
        return dg.RunRequest(partition_key=source, tags={"event_ingest/source": source})

    return _sensor
