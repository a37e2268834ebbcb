"""The pooled instance storage (component/instance_storage.py) that deploy/dagster.yaml names: the same
Dagster storage on the same tables, with run and schedule storage calls reusing pooled connections where
dagster-postgres opens a Postgres session per call. Counted where sessions start: SQLAlchemy's pool
`connect` event (a new DBAPI connection, i.e. a new Postgres backend) and pg_stat_activity."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.scheduler.instigation import TickStatus
from sqlalchemy import event
from sqlalchemy.pool import Pool

from event_ingest.component.instance_storage import PooledPostgresStorage

ROOT = Path(__file__).resolve().parents[2]
CALLS = 20  # rounds of what a sensor tick asks of the storage


@contextmanager
def sessions_started() -> Iterator[list[int]]:
    """How many new Postgres connections (backends) any SQLAlchemy pool in this process opens meanwhile."""
    opened: list[int] = []

    def count(_dbapi_connection: object, _record: object) -> None:
        opened.append(1)

    event.listen(Pool, "connect", count)
    try:
        yield opened
    finally:
        event.remove(Pool, "connect", count)


PER_ROUND = 6


def storage_calls(instance: dg.DagsterInstance) -> None:
    """What a sensor tick (schedule storage), a run's plan refresh (run storage) and a run's progress
    report (event log: a materialization written, the latest read back) ask of the storage."""
    key = dg.AssetKey("pool_probe")
    for _ in range(CALLS):
        instance.all_instigator_state()
        instance.purge_ticks("origin", "selector", before=time.time() - 86400, tick_statuses=[TickStatus.SKIPPED])
        instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        instance.get_daemon_heartbeats()
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key))
        assert instance.get_latest_materialization_event(key) is not None


@contextmanager
def project_instance(tmp_path: Path, storage_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """The instance exactly as deploy/dagster.yaml configures it."""
    shutil.copy(ROOT / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("EVENT_INGEST_DAGSTER_DATABASE_URL", storage_url)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance


def test_the_project_instance_reuses_connections_where_dagster_postgres_opens_one_per_call(
    tmp_path, dagster_storage_url, monkeypatch
):
    with project_instance(tmp_path, dagster_storage_url, monkeypatch) as instance:
        storage_calls(instance)  # warm: the pools' first connections
        with sessions_started() as pooled:
            storage_calls(instance)
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": dagster_storage_url}}}) as plain:
        with sessions_started() as unpooled:
            storage_calls(plain)
    # dagster-postgres: a backend per call (the counter counts). The project's storage: none once warm.
    assert len(unpooled) >= PER_ROUND * CALLS, len(unpooled)
    assert len(pooled) == 0, f"{len(pooled)} new connections for {PER_ROUND * CALLS} warm storage calls"


def test_threads_share_a_pool_no_larger_than_configured(tmp_path, dagster_storage_url):
    """As many threads as the pool holds (the daemon's sensor threads): each storage opens at most
    pool_size connections however many calls they make, keeps them, and dispose() closes them."""
    size = 3
    storage = PooledPostgresStorage(dagster_storage_url, pool_size=size)
    try:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(10):
                    storage.schedule_storage.all_instigator_state()
                    storage.run_storage.get_run_records()
                    storage.event_log_storage.get_latest_materialization_events([dg.AssetKey("pool_probe")])
            except BaseException as exc:  # reported below
                errors.append(exc)

        with sessions_started() as opened:
            threads = [threading.Thread(target=work) for _ in range(size)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors
        assert len(opened) <= 3 * size, f"{len(opened)} connections opened for {3 * 10 * size} calls"
        assert 0 < held_by_this_process(dagster_storage_url) <= 3 * size
    finally:
        storage.run_storage.dispose()
        storage.schedule_storage.dispose()
        storage.event_log_storage.dispose()
    assert held_by_this_process(dagster_storage_url) == 0, "dispose() leaves no connection open"


def held_by_this_process(storage_url: str) -> int:
    """Connections to the storage database whose client is this process (pg_stat_activity.client_port)."""
    plain = storage_url.replace("postgresql+psycopg2://", "postgresql://")
    ports = _own_tcp_ports()
    with psycopg.connect(plain, autocommit=True) as conn:
        me = conn.info.backend_pid
        rows = conn.execute(
            "SELECT client_port FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s", (me,)
        ).fetchall()
    return sum(1 for (port,) in rows if port in ports)


def _own_tcp_ports() -> set[int]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_the_webserver_keeps_dagsters_own_tuning(tmp_path, dagster_storage_url, monkeypatch):
    with project_instance(tmp_path, dagster_storage_url, monkeypatch) as instance:
        instance.optimize_for_webserver(statement_timeout=5000, pool_recycle=3600, max_overflow=5)
        storage = instance.schedule_storage
        assert not storage.pool.active  # type: ignore[attr-defined]
        with storage.connect() as conn:
            # The webserver's statement timeout applies: Dagster's engine, not the pool, answered.
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "5s"
        storage_calls(instance)


def test_a_bad_pool_size_is_one_clear_error(dagster_storage_url):
    with pytest.raises(ValueError, match="pool_size 0 is not valid"):
        PooledPostgresStorage(dagster_storage_url, pool_size=0)


def test_a_restarted_connection_is_replaced_not_reported(tmp_path, dagster_storage_url, monkeypatch):
    """A pooled connection whose backend died (Postgres restarted, an idle timeout) is checked before use."""
    with project_instance(tmp_path, dagster_storage_url, monkeypatch) as instance:
        storage_calls(instance)
        kill_backends(dagster_storage_url)
        storage_calls(instance)  # would raise "server closed the connection unexpectedly" without the check


def kill_backends(storage_url: str) -> None:
    plain = storage_url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed is not None and killed[0] > 0
