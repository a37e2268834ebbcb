"""A consumer outlives a Redis outage: it keeps its process, asks the source nothing, and says why.

Redis here is unreachable for the worker's whole life (a closed port): every heartbeat fails, every lease
cannot be taken. The worker must run until told to stop and end normally, having sent the source nothing;
a heartbeat that let the outage escape would end the consumer's process instead (the chaos check
``no_consumer_crash``; mutant ``worker_heartbeat_unguarded``).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from event_ingest.core.worker import Worker, WorkerOptions
from event_ingest_tests.conftest import source_config


def test_a_worker_keeps_running_and_asks_nothing_while_redis_is_down(make_mock, database_url, store, caplog):
    mock = make_mock(backlog=50)
    source = source_config(f"ro_{int(time.time() * 1000) % 10**8}", mock.url, page_size=10)
    store.apply_schema([source.name])
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    worker = Worker(
        f"outage-{source.name}",
        [source],
        database_url=database_url,
        redis_client=dead,
        options=WorkerOptions(report_every_s=0.5, poll_s=0.2, backoff_start_s=0.1),
    )
    stop = threading.Event()
    ended: list[str] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            ended.append(worker.run(lambda _w: {source.name}, should_stop=stop.is_set))
        except BaseException as exc:  # what would end a consumer's process
            failed.append(exc)

    with caplog.at_level(logging.WARNING):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        time.sleep(3.0)  # several heartbeats and drain attempts into the outage
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the worker did not stop when told to"
    assert not failed, f"the outage ended the worker: {failed[0]!r}"
    assert len(ended) == 1
    assert mock.stats()["requests"] == 0, "a request reached the source while Redis was down"
    said = caplog.text
    assert "heartbeat not written" in said, said[-2000:]
