"""A primary and its replica on loopback, as a highly available Redis is, with a failover that loses writes.

Clients reach "the Redis" through a relay (``vip``), as through a virtual IP or a DNS name that a failover
moves; the replica is fed through another relay (``link``), the replication link. Replication is
asynchronous, so a replica can be behind when its primary dies: ``failover_behind`` makes that happen on
purpose - the link holds what the primary sends, the primary is killed, what was held is lost, the replica
is promoted (``REPLICAOF NO ONE``) and the VIP moved to it - and a new replica can then join the new primary.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from ..devstack.embedded import EmbeddedRedis
from ..devstack.procs import kill_hard
from .relay import HOST, Relay

# For every server of the pair, whichever role it has now: a replica's full sync starts at once (the default
# waits 5 s for more replicas to share one transfer), and leaves no RDB file behind (a server restarted later,
# as redis_restart does, starts empty, as it says, rather than from the file of its last sync).
SERVER_ARGS = ("--repl-diskless-sync-delay", "0", "--rdb-del-sync-files", "yes")


def port_of(server: EmbeddedRedis) -> int:
    """The port of a server that has been started (it keeps it across restarts)."""
    if server.port is None:
        raise RuntimeError(f"{server} has no port: it was never started")
    return server.port


def pid_of(server: EmbeddedRedis) -> int:
    pid = server.pid
    if pid is None:
        raise RuntimeError(f"{server} is not running")
    return pid


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=5, socket_connect_timeout=5)


def replication(port: int) -> dict:
    client = _client(port)
    try:
        return client.info("replication")
    finally:
        client.close()


class RedisPair:
    replica: EmbeddedRedis | None

    def __init__(self, base_dir: Path, primary: EmbeddedRedis) -> None:
        """``primary``: started, serving; its replica and the two relays are made here."""
        self.base_dir = base_dir
        self.primary = primary
        client = _client(port_of(primary))
        try:
            client.config_set("repl-diskless-sync-delay", 0)
            client.config_set("rdb-del-sync-files", "yes")
        finally:
            client.close()
        primary.extra_args = [*primary.extra_args, *SERVER_ARGS]  # the same after a restart
        self.generation = 0
        self.link = Relay(port_of(primary))
        self.vip = Relay(port_of(primary))
        self.replica = self._new_replica()

    @property
    def url(self) -> str:
        """What clients are given: the VIP."""
        return f"redis://{HOST}:{self.vip.port}/0"

    def _new_replica(self) -> EmbeddedRedis:
        self.generation += 1
        replica = EmbeddedRedis(
            self.base_dir / f"redis-{self.generation}",
            extra_args=[*SERVER_ARGS, "--replicaof", HOST, str(self.link.port)],
        )
        replica.start()
        return replica

    def wait_in_sync(self, timeout_s: float = 20.0) -> None:
        """Until the replica has everything the primary has written."""
        deadline = time.monotonic() + timeout_s
        replica_port = port_of(self.the_replica())
        while True:
            primary = replication(port_of(self.primary))
            replica = replication(replica_port)
            if replica.get("master_link_status") == "up" and replica.get("slave_repl_offset", -1) >= primary.get(
                "master_repl_offset", 0
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica on port {replica_port} not in sync after {timeout_s:g}s")
            time.sleep(0.02)

    def hold_link(self) -> None:
        """From now on the replica receives nothing: it falls behind."""
        self.link.hold()

    def kill_primary(self) -> int:
        """The primary dies (SIGKILL); what the link held is lost. Returns how many bytes that was."""
        kill_hard(pid_of(self.primary))
        self.primary.stop()
        return self.link.cut()

    def promote(self) -> None:
        """The replica becomes the primary and clients are sent to it (the VIP moves); no replica for now."""
        replica = self.the_replica()
        client = _client(port_of(replica))
        try:
            client.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            client.close()
        self.primary, self.replica = replica, None
        replica.extra_args = list(SERVER_ARGS)  # restarted later (redis_restart), it stays a primary
        self.vip.switch(port_of(replica))
        self.link.switch(port_of(replica))

    def the_replica(self) -> EmbeddedRedis:
        """The replica (there is none between a promotion and ``add_replica``)."""
        if self.replica is None:
            raise RuntimeError("the pair has no replica now: add_replica() first")
        return self.replica

    def add_replica(self) -> None:
        """A new replica (empty, on a data directory of its own) joins the primary through the link."""
        if self.replica is None:
            self.replica = self._new_replica()

    def stop(self) -> None:
        self.vip.close()
        self.link.close()
        for server in (self.replica, self.primary):
            if server is not None:
                server.stop()
