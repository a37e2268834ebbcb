"""Behind a real PgBouncer in transaction mode (Debian's package), started here on a free port.

Each transaction of one client connection may run on another server connection there, so a statement
psycopg prepared in one is missing from the next. With EVENT_INGEST_DATABASE_POOLER=transaction the
store prepares nothing, and a drain, its commits, the checks, status, the counter audit and the recount
all work; without it the same drain fails on the prepared-statement error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import pytest

from event_ingest.config import DATABASE_POOLER_ENV
from event_ingest.core import Store, drain
from event_ingest.core.checks import cursor_check, gap_check
from event_ingest.core.progress import DrainStatus
from event_ingest.core.status import read_status
from event_ingest.devstack.procs import free_port
from event_ingest_tests.conftest import source_config

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
)
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None, reason="the pgbouncer binary is not installed (Debian: apt-get install -y pgbouncer)"
)


@pytest.fixture
def bouncer_url(database_url, tmp_path):
    """A PgBouncer in transaction mode before the test database; its URL."""
    pg = urlsplit(database_url)
    dbname = pg.path.lstrip("/")
    login = f"user={unquote(pg.username or 'postgres')}"
    if pg.password:
        login += f" password={unquote(pg.password)}"
    port = free_port()
    config = tmp_path / "pgbouncer.ini"
    # server_round_robin: transactions go round the server connections (the default reuses the last one
    # freed, which one client alone would always get back, hiding what a busy pool does).
    config.write_text(
        f"[databases]\n{dbname} = host={pg.hostname} port={pg.port or 5432} dbname={dbname} {login}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\ndefault_pool_size = 4\nserver_round_robin = 1\n"
        "logfile =\npidfile =\n"
    )
    config.chmod(0o644)
    tmp_path.chmod(0o755)  # PgBouncer refuses to run as root: it reads its file as `nobody`
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = open(tmp_path / "pgbouncer.log", "wb")
    proc = subprocess.Popen([PGBOUNCER, *user, str(config)], stdout=log, stderr=subprocess.STDOUT)
    url = urlunsplit(pg._replace(netloc=f"{pg.username or 'postgres'}@127.0.0.1:{port}"))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "pgbouncer.log").read_text()
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, (tmp_path / "pgbouncer.log").read_text()
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def two_server_connections(url: str) -> None:
    """Two transactions at once: the pool then holds (at least) two server connections to go round."""
    with psycopg.connect(url) as a, psycopg.connect(url) as b:
        a.execute("SELECT 1")
        b.execute("SELECT 1")


def test_a_drain_commits_and_checks_work_behind_pgbouncer_only_with_the_switch(
    bouncer_url, make_mock, redis_client, store, source_name, monkeypatch
):
    mock = make_mock(backlog=60)
    source = source_config(source_name, mock.url, page_size=5)  # 12 pages: 12 commits of the same statements
    store.apply_schema([source_name])
    two_server_connections(bouncer_url)

    # Without the switch: psycopg prepares the commit's statements on one server connection and the next
    # transaction runs on another.
    monkeypatch.delenv(DATABASE_POOLER_ENV, raising=False)
    with Store(bouncer_url) as direct:
        assert direct.pooler == "none"
        broken = drain(source, store=direct, redis_client=redis_client)
    assert broken.status == DrainStatus.POSTGRES_DOWN, broken.summary()
    assert "prepared statement" in broken.error and "does not exist" in broken.error, broken.error

    monkeypatch.setenv(DATABASE_POOLER_ENV, "transaction")
    with Store(bouncer_url) as pooled:
        assert pooled.pooler == "transaction"
        stats = drain(source, store=pooled, redis_client=redis_client)
        assert (stats.status, stats.cursor_after) == (DrainStatus.CAUGHT_UP, 60), stats.summary()
        assert pooled.event_ids(source_name) == list(range(1, 61))
        for _ in range(3):  # every check many times over, each on whichever server connection comes
            assert gap_check(pooled, source_name).passed
            assert cursor_check(pooled, source_name).passed
            assert pooled.verify_counters(source_name).drift == ()
            [row] = [r for r in read_status(pooled, [source_name]).rows if r.source == source_name]
            assert (row.cursor, row.events, row.gaps) == (60, 60, 0)
        assert pooled.recount(source_name).changed == ()
    with Store(bouncer_url, read_only=True) as reader:  # what `event-ingest status` opens
        for _ in range(6):
            assert gap_check(reader, source_name).passed


def test_a_pooler_mode_that_is_not_known_is_one_line(monkeypatch, database_url):
    from event_ingest.config import ConfigError

    monkeypatch.setenv(DATABASE_POOLER_ENV, "statement")
    with pytest.raises(ConfigError) as info:
        Store(database_url)
    assert str(info.value) == (
        "environment variable EVENT_INGEST_DATABASE_POOLER='statement' is not valid; expected one of none, session, "
        "transaction (transaction: a pooler in transaction mode, e.g. PgBouncer's pool_mode = transaction "
        "(prepared statements off))"
    )
