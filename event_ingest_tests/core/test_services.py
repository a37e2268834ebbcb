"""Connecting to Redis: a plain URL, and a highly available Redis through a real Sentinel on loopback."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis

from event_ingest.core import RedisUnavailable, connect_redis
from event_ingest.core.gate import Gate
from event_ingest.core.gate_lua import backdate_era
from event_ingest.devstack.procs import free_port

PASSWORD = "s3cret-pw"
SERVICE = "events-redis"
WAIT_S = 60.0
HOLD_S = 30.0


def _until(what: str, condition) -> None:
    give_up = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < give_up, f"{what} did not happen within {WAIT_S:g}s"
        time.sleep(0.1)


def _local(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=5)


@pytest.fixture
def sentinel(tmp_path):
    """A primary, its replica and one Sentinel watching them (quorum 1), all asking for a password."""
    from event_ingest.devstack.embedded import EmbeddedRedis

    primary = EmbeddedRedis(tmp_path / "primary")
    primary.start()
    replica = EmbeddedRedis(tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    replica.start()
    for server in (primary, replica):  # after start: the readiness probe pings without a password
        client = redis.Redis(host="127.0.0.1", port=server.port)
        client.config_set("masterauth", PASSWORD)  # a demoted primary syncs from the promoted replica
        client.config_set("requirepass", PASSWORD)
        client.close()
    port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites its own configuration: a file of its own
    config.write_text(
        f"bind 127.0.0.1\nport {port}\ndir {tmp_path}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 1\n"
        f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 10000\n"
    )
    with open(tmp_path / "sentinel.log", "wb") as log:
        proc = subprocess.Popen([str(primary.binary), str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT)
    watcher = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        _until("the sentinel answering", lambda: _answers(watcher))
        _until("the sentinel knowing the replica", lambda: watcher.sentinel_slaves(SERVICE))
        yield {"port": port, "primary": primary, "replica": replica, "watcher": watcher}
    finally:
        watcher.close()
        proc.terminate()
        proc.wait(10)
        replica.stop()
        primary.stop()


def _answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_a_sentinel_url_reaches_the_primary_and_follows_a_failover(sentinel, source_name):
    url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{free_port()},127.0.0.1:{sentinel['port']}/{SERVICE}/0"
    client = connect_redis(url)  # the first sentinel listed is down: the next one answers
    primary, replica = sentinel["primary"], sentinel["replica"]
    assert client.info("server")["tcp_port"] == primary.port
    gate = Gate(client, source_name, interval_s=0.2, hold_s=HOLD_S, token="a")
    backdate_era(client, gate.era_key, 3600)
    assert gate.acquire(max_wait_s=WAIT_S) is not None
    gate.close()
    assert client.wait(1, 10_000) == 1  # the replica has all of it

    sentinel["watcher"].execute_command("SENTINEL", "FAILOVER", SERVICE)
    _until(
        "the failover",
        lambda: int(sentinel["watcher"].sentinel_get_master_addr_by_name(SERVICE)[1]) == replica.port,
    )

    def on_new_primary() -> bool:
        try:
            return client.info("server")["tcp_port"] == replica.port
        except redis.RedisError:  # the old connection ends (its server is a replica now): the client asks again
            return False

    _until("the client reaching the promoted replica", on_new_primary)
    granted, wait_us = gate.try_acquire()  # another server: a new era, one hold, though the replica was in sync
    assert not granted and wait_us == HOLD_S * 1_000_000
    client.close()


def test_sentinel_credentials_reach_the_servers_and_never_a_message(sentinel):
    port = sentinel["port"]
    with pytest.raises(RedisUnavailable) as wrong:
        connect_redis(f"redis+sentinel://:not-{PASSWORD}@127.0.0.1:{port}/{SERVICE}")
    assert "not-" not in str(wrong.value) and ":***@" in str(wrong.value)
    with pytest.raises(RedisUnavailable, match="no sentinel at 127.0.0.1:1 named a primary") as down:
        connect_redis(f"redis+sentinel://:{PASSWORD}@127.0.0.1:1/{SERVICE}", timeout_s=1.0)
    assert PASSWORD not in str(down.value) and "\n" not in str(down.value)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis+sentinel://:pw@host:port/svc", "sentinel address 'host:port' is not host[:port]"),
        ("redis+sentinel://host:26379", "the path must be /service or /service/db"),
        ("redis+sentinel://host:26379/svc/zero", "the path must be /service or /service/db"),
        ("redis+sentinel://host:26379/svc?db=1", "the only option is sentinel_auth=yes|no"),
    ],
)
def test_a_bad_sentinel_url_says_what_is_wrong(url, said):
    with pytest.raises(RedisUnavailable, match="^bad Redis URL .*" + said.replace("|", r"\|").replace("[", r"\[")):
        connect_redis(url, check=False)
