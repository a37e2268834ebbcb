"""Dagster resources: where Postgres, Redis and the sources file are. URLs come from the environment."""


import logging

import dagster as dg

from ..config import SourceConfig
from ..core import DrainOptions, DrainStats, RedisUnavailable, Store, StoreError, connect_redis, drain


class IngestResource(dg.ConfigurableResource):
    """Runs the core drain. Nothing Dagster-specific happens below this class."""

    database_url: str
    redis_url: str
    lease_ttl_s: float = 30.0
    lease_wait_s: float = 5.0

    def store(self) -> Store:
        try:
            return Store(self.database_url, application_name="event-ingest-dagster")
        except StoreError as exc:
            raise dg.Failure(description=str(exc)) from None

    def drain(self, source: SourceConfig, logger: logging.Logger) -> DrainStats:
        try:
            redis_client = connect_redis(self.redis_url)
        except RedisUnavailable as exc:
            raise dg.Failure(description=str(exc)) from None
        with self.store() as store:
            try:
                store.apply_schema()  # the tables; drain() adds this source's partition and state row
            except StoreError as exc:
                raise dg.Failure(description=str(exc)) from None
            try:
                return drain(
                    source, store=store, redis_client=redis_client,
                    options=DrainOptions(lease_ttl_s=self.lease_ttl_s, lease_wait_s=self.lease_wait_s),
                    logger=logger,
                )
            finally:
                redis_client.close()


def ingest_resource_from_env() -> IngestResource:
    return IngestResource(
        database_url=dg.EnvVar("EVENT_INGEST_DATABASE_URL"),
        redis_url=dg.EnvVar("EVENT_INGEST_REDIS_URL"),
    )
