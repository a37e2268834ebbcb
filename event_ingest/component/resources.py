"""Dagster resources: where Postgres and Redis are. URLs come from the environment (``dg.EnvVar``),
read when a run or a sensor tick starts, never when the definitions load."""

import logging
import threading

import dagster as dg
from redis import Redis

from ..config import DATABASE_URL_ENV, REDIS_URL_ENV, SourceConfig
from ..core import DrainOptions, DrainStats, RedisUnavailable, Store, StoreError, connect_redis, drain
from .names import Names

# Sensors tick every few seconds, one per source, in one long-lived code server: they share one client
# (and its connection pool) per URL rather than connecting on every tick.
_shared: dict[str, Redis] = {}
_shared_lock = threading.Lock()


class IngestResource(dg.ConfigurableResource):
    """The services the ingest talks to. Nothing Dagster-specific happens below this class."""

    database_url: str
    redis_url: str

    def store(self, application_name: str = "event-ingest-dagster") -> Store:
        try:
            return Store(self.database_url, application_name=application_name)
        except StoreError as exc:
            raise dg.Failure(description=str(exc)) from None

    def redis(self) -> Redis:
        try:
            return connect_redis(self.redis_url)
        except RedisUnavailable as exc:
            raise dg.Failure(description=str(exc)) from None

    def shared_redis(self) -> Redis:
        """A Redis client kept for the life of the process (do not close it)."""
        with _shared_lock:
            client = _shared.get(self.redis_url)
            if client is None:
                try:
                    client = _shared[self.redis_url] = connect_redis(self.redis_url, check=False)
                except RedisUnavailable as exc:
                    raise dg.Failure(description=str(exc)) from None
            return client

    def prepare(self, sources: list[str]) -> None:
        """Tables and the sources' partitions and state rows, once per run (idempotent)."""
        with self.store() as store:
            try:
                store.apply_schema(sources)
            except StoreError as exc:
                raise dg.Failure(description=str(exc)) from None

    def drain(
        self,
        source: SourceConfig,
        logger: logging.Logger | logging.LoggerAdapter,
        options: DrainOptions = DrainOptions(),
    ) -> DrainStats:
        """One bounded drain (to the head of the source, or its budget): a manual or backfill materialization."""
        self.prepare([source.name])
        redis_client = self.redis()
        try:
            with self.store() as store:
                return drain(source, store=store, redis_client=redis_client, options=options, logger=logger)
        finally:
            redis_client.close()


# One object per key: Dagster merges the definitions of several instances and accepts a resource key
# twice only when it is the very same object (two equal-looking resources are a conflict).
_defaults: dict[str, IngestResource] = {}


def ingest_resource_from_env() -> IngestResource:
    return IngestResource(database_url=dg.EnvVar(DATABASE_URL_ENV), redis_url=dg.EnvVar(REDIS_URL_ENV))


def default_resource(key: str) -> IngestResource:
    """The resource an instance binds under ``key`` unless told not to: URLs from EVENT_INGEST_DATABASE_URL
    and EVENT_INGEST_REDIS_URL, read when a run or tick starts."""
    with _shared_lock:
        return _defaults.setdefault(key, ingest_resource_from_env())


# The contexts an instance's resource is read from.
ResourceContext = (
    dg.AssetExecutionContext | dg.AssetCheckExecutionContext | dg.OpExecutionContext | dg.SensorEvaluationContext
)


def ingest_of(context: ResourceContext, names: Names) -> IngestResource:
    """The instance's resource, from an asset, op, check or sensor context."""
    return getattr(context.resources, names.resource_key)


# The source sensors' resources, built once per definition and kept for the life of the process.
_built: dict[int, tuple[object, IngestResource]] = {}


def sensor_ingest(context: dg.SensorEvaluationContext, names: Names) -> IngestResource:
    """The instance's resource for a source sensor's tick, without opening a Dagster instance each tick.

    A sensor that declares a resource gets a DagsterInstance opened from its ref on every tick, before its
    function runs (its three storages' engines and schema checks; with dagster-postgres' NullPool a backend
    forked for each), and building a resource outside a run makes an ephemeral one. At 50 sources, a sensor
    each every 10 s (the default interval), that is 5 instances a second. So the source sensors declare no
    resource: they build the definition bound under the instance's key (the user's own, if they bound one)
    once per code server process and keep it. Nothing is lost by keeping it: its values (``dg.EnvVar``) are
    read from the process's environment, which only a code location reload (a new process) changes.
    """
    repository = context.repository_def
    bound = repository.get_top_level_resources() if repository is not None else {}
    definition = bound.get(names.resource_key)
    if definition is None:
        raise dg.DagsterInvariantViolationError(
            f"sensor {context.sensor_name}: no resource bound under {names.resource_key!r} in this code location "
            "(the event-ingest component binds one unless provide_resource: false)"
        )
    with _shared_lock:
        kept = _built.get(id(definition))
    if kept is not None and kept[0] is definition:
        return kept[1]
    with dg.build_resources({names.resource_key: definition}) as built:
        resource = getattr(built, names.resource_key)
    with _shared_lock:
        _built[id(definition)] = (definition, resource)
    return resource
