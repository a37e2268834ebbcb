"""Real Postgres and valkey servers from the pip-installed binaries, in tmp dirs."""

from __future__ import annotations

import os
import pwd
import socket
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis

from event_ingest.devstack.embedded import (
    PG_SYSTEM_USER,
    PORT_FILE,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
)
from event_ingest.devstack.procs import free_port

pytestmark = pytest.mark.slow


def _process_gone(pid: int) -> bool:
    """No such process any more, not even a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _group_gone(pgid: int) -> bool:
    """No process left in the server's process group (e.g. no orphaned backends)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_free_port_is_bindable():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_postgres_data_survives_restart(tmp_path):
    data = tmp_path / "pg"
    pg = EmbeddedPostgres(data)  # fsync on, as in the dev stack
    url = pg.start()
    try:
        port, pid = pg.port, pg.pid
        assert url == pg.url == f"postgresql://postgres@127.0.0.1:{port}/event_ingest"
        assert isinstance(pg.url, str)
        assert pg.url("dagster") == f"postgresql://postgres@127.0.0.1:{port}/dagster"
        assert pg.is_running()
        assert (tmp_path / "pg.log").read_text().count("ready to accept connections") == 1
        if os.geteuid() == 0 and sys.platform.startswith("linux"):
            assert _uid_of(pid) == pwd.getpwnam(PG_SYSTEM_USER).pw_uid
        socket_dir = pg.socket_dir
        assert socket_dir is not None and socket_dir.is_dir()

        with psycopg.connect(url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            conn.execute("create table t (id int primary key, v text)")
            conn.execute("insert into t values (1, 'kept'), (2, 'also kept')")
        with psycopg.connect(pg.url("dagster")) as conn:
            assert conn.execute("select current_database()").fetchone() == ("dagster",)
    finally:
        pg.stop()

    assert not pg.is_running() and pg.pid is None
    assert _process_gone(pid) and _group_gone(pid)
    assert not socket_dir.exists()
    assert int((data / PORT_FILE).read_text()) == port

    # A pid file naming a live but unrelated process (pid reuse after a reboot or a
    # container restart) is stale: it must not block the next start.
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n0\n{port}\n")

    with EmbeddedPostgres(data) as pg2:  # same data dir, port remembered
        assert pg2.port == port
        with psycopg.connect(pg2.url) as conn:
            rows = conn.execute("select id, v from t order by id").fetchall()
        assert rows == [(1, "kept"), (2, "also kept")]
        pid2 = pg2.pid
    assert _process_gone(pid2) and _group_gone(pid2)


def test_postgres_live_orphan_is_reported_adopted_or_stopped(tmp_path):
    data = tmp_path / "pg"
    first = EmbeddedPostgres(data, fast=True, databases=("one",))
    first.start()
    try:
        # Another instance on the same data dir (think: a crashed earlier run) → clear error.
        with pytest.raises(EmbeddedServerError, match=rf"pid {first.pid}\).*still running"):
            EmbeddedPostgres(data, fast=True, databases=("one",)).start()
        assert first.is_running()

        adopter = EmbeddedPostgres(data, on_orphan="adopt", databases=("one", "two"))
        assert adopter.start() == f"postgresql://postgres@127.0.0.1:{first.port}/one"
        assert adopter.adopted and adopter.pid == first.pid and adopter.is_running()
        with psycopg.connect(adopter.url("two")) as conn:  # missing database created
            assert conn.execute("select 1").fetchone() == (1,)
        adopter.stop()
        assert not first.is_running()  # reaps it: we are its parent
        assert _process_gone(first.pid) and _group_gone(first.pid)

        first.start()
        stopper = EmbeddedPostgres(data, fast=True, on_orphan="stop", databases=("one",))
        with stopper:
            assert not first.is_running()
            assert stopper.is_running() and not stopper.adopted
            assert stopper.port == first.port  # remembered port, free again
            with psycopg.connect(stopper.url) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
    finally:
        first.stop()


def test_postgres_start_failure_names_the_log(tmp_path):
    pg = EmbeddedPostgres(tmp_path / "pg", fast=True, settings={"no_such_setting": 1})
    with pytest.raises(EmbeddedServerError) as err:
        pg.start()
    msg = str(err.value)
    assert "postgres exited with code" in msg
    assert f"log: {tmp_path / 'pg.log'}" in msg
    assert "no_such_setting" in msg  # from the quoted log lines
    assert "\n" not in msg
    assert not pg.is_running()


def test_redis_set_get_and_lua_time(tmp_path):
    with EmbeddedRedis(tmp_path / "rd") as rd:
        assert rd.url == f"redis://127.0.0.1:{rd.port}/0"
        assert rd.url(3) == f"redis://127.0.0.1:{rd.port}/3"
        pid = rd.pid
        r = redis.Redis.from_url(rd.url)
        assert r.set("k", "v") and r.get("k") == b"v"
        secs, micros = r.eval("return redis.call('TIME')", 0)
        assert abs(int(secs) + int(micros) / 1e6 - time.time()) < 5
        assert r.eval("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])", 1, "k2", "x") == b"x"
        r.close()
        assert (tmp_path / "rd.log").exists()
    assert not rd.is_running()
    assert _process_gone(pid) and _group_gone(pid)


def test_redis_persistent_restart_and_orphan(tmp_path):
    data = tmp_path / "rd"
    rd = EmbeddedRedis(data, persistent=True)
    rd.start()
    port = rd.port
    try:
        with redis.Redis.from_url(rd.url) as r:
            r.set("survives", "yes")
        with pytest.raises(EmbeddedServerError, match=rf"pid {rd.pid}\).*still running"):
            EmbeddedRedis(data).start()
    finally:
        rd.stop()

    with EmbeddedRedis(data, persistent=True) as rd2:
        assert rd2.port == port
        with redis.Redis.from_url(rd2.url) as r:
            assert r.get("survives") == b"yes"


def test_explicit_port_in_use_is_reported(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(EmbeddedServerError, match=f"port {busy} .*already in use"):
            EmbeddedRedis(tmp_path / "rd", port=busy).start()
