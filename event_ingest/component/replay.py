"""The `replay` job: `event-ingest replay` from the Dagster launchpad.

Run config: ``source`` (a configured source), ``from_id`` (the new cursor: the next request asks for ids
above it) and, only to delete, ``delete_from`` (events with ids at or above it are deleted in the same
transaction). The rewind goes through the fence (core/replay.py): an `ingest` run hosting the source has its
next commit fenced and reads the source again from ``from_id``, with no other step. A refused request fails
the run with the reason and changes nothing.
"""

# No `from __future__ import annotations`: Dagster reads the op's config annotation at definition time.
import dagster as dg

from ..config import SourceConfig
from ..core.replay import ReplayRefused, replay
from .names import Names
from .resources import ingest_of


class ReplayConfig(dg.Config):
    source: str
    from_id: int
    delete_from: int | None = None  # only to delete: events with ids >= delete_from


def build_replay(sources: list[SourceConfig], names: Names = Names()) -> dg.Definitions:
    source_names = [s.name for s in sources]

    @dg.op(
        name=names.of("rewind_cursor"),  # op names are unique in a code location, like job names
        description="Rewind one source's cursor through the fence (and delete ids >= "
        "delete_from, if given), in one transaction.",
        required_resource_keys={names.resource_key},
    )
    def rewind_cursor(context: dg.OpExecutionContext, config: ReplayConfig) -> dg.Output:
        if config.source not in source_names:
            raise dg.Failure(
                description=f"source {config.source!r} is not configured (configured: "
                f"{', '.join(source_names) or 'none'}); nothing done"
            )
        with ingest_of(context, names).store(application_name="event-ingest-replay") as store:
            try:
                result = replay(store, config.source, from_id=config.from_id, delete_from=config.delete_from)
            except ReplayRefused as exc:
                raise dg.Failure(description=f"refused: {exc}") from None
        context.log.info(result.summary())
        metadata: dict[str, dg.MetadataValue] = {
            "source": dg.MetadataValue.text(result.source),
            "cursor_before": dg.MetadataValue.int(result.cursor_before),
            "cursor_after": dg.MetadataValue.int(result.cursor_after),
            "epoch": dg.MetadataValue.int(result.epoch),
            "deleted": dg.MetadataValue.int(result.deleted),
        }
        if result.delete_from is not None:
            metadata["delete_from"] = dg.MetadataValue.int(result.delete_from)
        return dg.Output(None, metadata=metadata)

    @dg.job(
        name=names.of("replay"),
        executor_def=dg.in_process_executor,
        description="Read one source again from an id: set source and from_id (and delete_from, only to delete "
        "stored events at or above it) in the run config. Goes through the fence; stored events are "
        "kept and not stored twice.",
    )
    def replay_job() -> None:
        rewind_cursor()

    return dg.Definitions(jobs=[replay_job])
