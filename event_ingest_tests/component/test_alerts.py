"""Alert sensors against a real Dagster instance (Postgres storage), real runs that fail and pass,
and a local HTTP server that records what the webhook receives."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from event_ingest.component.alerts import build_alerts
from event_ingest.component.alerts.check_results import EVENTS_PER_PAGE
from event_ingest.config import ALERT_WEBHOOK_URL_ENV, DAGSTER_UI_URL_ENV, SourceConfig

SECRET = "alert-s3cr3t-5e0c2b91"
PARTITIONS = dg.StaticPartitionsDefinition(["source_a", "source_b"])


class Webhook:
    """A local HTTP server recording the JSON bodies POSTed to it; it can refuse the next few."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.refuse_next = 0
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if webhook.refuse_next:
                    webhook.refuse_next -= 1
                    self.send_response(500)
                else:
                    webhook.received.append(json.loads(body))
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/{SECRET}"  # a token in the URL, as Slack's
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self) -> list[dict]:
        taken, self.received = self.received, []
        return taken

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(monkeypatch):
    hook = Webhook()
    monkeypatch.setenv(ALERT_WEBHOOK_URL_ENV, hook.url)
    monkeypatch.setenv(DAGSTER_UI_URL_ENV, "http://dagster.example:3000/")
    yield hook
    hook.close()


# What the test's own job and check do, per partition; flipped by the tests.
FAILING = {"source_a": False, "source_b": False}


@dg.op
def ingest_step(context) -> None:
    if FAILING[context.partition_key]:
        raise RuntimeError(f"cannot reach postgresql://ingest:{SECRET}@db:5432/events with token {SECRET}")


@dg.job(partitions_def=PARTITIONS)
def ingest_like() -> None:
    ingest_step()


@dg.asset(name="events", partitions_def=PARTITIONS)
def events_like() -> None:
    return None


@dg.asset_check(asset=events_like, partitions_def=PARTITIONS)
def no_gaps_like(context) -> dg.AssetCheckResult:
    failing = FAILING[context.partition_key]
    return dg.AssetCheckResult(passed=not failing, metadata={"missing_ids": 11 if failing else 0})


@dg.asset
def not_ours() -> None:
    return None


@dg.asset_check(asset=not_ours)
def not_ours_check() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False)


@dg.op
def always_fails() -> None:
    raise RuntimeError("a job of the project's own, not event-ingest's")


@dg.job
def not_monitored() -> None:
    always_fails()


@pytest.fixture
def defs():
    FAILING.update(source_a=False, source_b=False)
    source = SourceConfig(name="source_a", url="http://h/e", headers={"Authorization": f"Bearer {SECRET}"})
    materialize = dg.define_asset_job("materialize", [events_like])
    return dg.Definitions.merge(
        dg.Definitions(
            jobs=[ingest_like, materialize, not_monitored, dg.define_asset_job("theirs", [not_ours])],
            assets=[events_like, not_ours],
            asset_checks=[no_gaps_like, not_ours_check],
        ),
        build_alerts([source], [dg.Definitions(jobs=[ingest_like, materialize])]),
    )


class Ticker:
    """Evaluates one sensor against the instance the way the daemon does, carrying its cursor over."""

    def __init__(self, defs: dg.Definitions, name: str, instance: dg.DagsterInstance) -> None:
        self.sensor = next(s for s in defs.sensors if s.name == name)
        self.defs, self.instance, self.cursor = defs, instance, None

    def __call__(self) -> str:
        result = self.sensor.evaluate_tick(
            dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs)
        )
        self.cursor = result.cursor if result.cursor is not None else self.cursor
        return result.skip_message or ""


class RunAlerts:
    """The two run sensors (failure, recovery), ticked together as the daemon would."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.failure = Ticker(defs, "alert_on_run_failure", instance)
        self.recovery = Ticker(defs, "alert_on_run_recovery", instance)

    def __call__(self) -> None:
        self.failure()
        self.recovery()


def run(defs, instance, job: str, partition: str, fail: bool) -> str:
    FAILING[partition] = fail
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False
    )
    assert result.success is not (fail and job == "ingest_like")
    return result.run_id


def states(messages: list[dict]) -> list[tuple]:
    return [(m["source"], m["state"], m["run_id"]) for m in messages]


def test_one_message_per_run_failure_incident(defs, dagster_instance, webhook):
    tick = RunAlerts(defs, dagster_instance)
    tick()  # the sensors start watching: what happened before is history
    first = run(defs, dagster_instance, "ingest_like", "source_a", fail=True)
    run(defs, dagster_instance, "ingest_like", "source_a", fail=True)  # the same incident, still failing
    tick()
    [opened] = webhook.take()
    assert (opened["kind"], opened["state"], opened["job"], opened["source"], opened["run_id"]) == (
        "run_failure",
        "opened",
        "ingest_like",
        "source_a",
        first,
    )
    assert opened["run_url"] == f"http://dagster.example:3000/runs/{first}"
    assert "cannot reach postgresql://ingest:***@db:5432/events with token ***" in opened["error"]
    assert opened["text"].startswith(
        f"event-ingest: run of job ingest_like for source source_a failed "
        f"(http://dagster.example:3000/runs/{first}): RuntimeError: cannot reach"
    )

    run(defs, dagster_instance, "ingest_like", "source_a", fail=True)
    other = run(defs, dagster_instance, "ingest_like", "source_b", fail=True)  # another partition: its own
    tick()
    assert states(webhook.take()) == [("source_b", "opened", other)]

    fixed = run(defs, dagster_instance, "ingest_like", "source_a", fail=False)
    run(defs, dagster_instance, "ingest_like", "source_a", fail=False)
    tick()
    assert states(webhook.take()) == [("source_a", "resolved", fixed)]

    again = run(defs, dagster_instance, "ingest_like", "source_a", fail=True)  # a new incident
    tick()
    assert states(webhook.take()) == [("source_a", "opened", again)]
    tick()
    assert webhook.take() == []  # nothing new: nothing sent


def test_an_incident_open_before_the_sensors_watch_is_announced_when_it_ends(defs, dagster_instance, webhook):
    """Whether a failure opens an incident is read from the run history, which goes back further than the
    sensors: a key failing before they first ran stays quiet until it recovers."""
    run(defs, dagster_instance, "ingest_like", "source_a", fail=True)
    tick = RunAlerts(defs, dagster_instance)
    tick()
    run(defs, dagster_instance, "ingest_like", "source_a", fail=True)
    tick()
    assert webhook.take() == []
    fixed = run(defs, dagster_instance, "ingest_like", "source_a", fail=False)
    tick()
    assert states(webhook.take()) == [("source_a", "resolved", fixed)]


def test_only_the_instance_s_own_jobs_are_watched(defs, dagster_instance, webhook):
    tick = RunAlerts(defs, dagster_instance)
    tick()
    checks = Ticker(defs, "alert_on_check_failure", dagster_instance)
    checks()
    result = defs.resolve_job_def("not_monitored").execute_in_process(instance=dagster_instance, raise_on_error=False)
    assert not result.success
    theirs = defs.resolve_job_def("theirs").execute_in_process(instance=dagster_instance)
    assert not theirs.get_asset_check_evaluations()[0].passed  # another asset's check failing
    failed = run(defs, dagster_instance, "ingest_like", "source_a", fail=True)
    tick()
    checks()
    assert states(webhook.take()) == [("source_a", "opened", failed)]


def test_a_run_alert_the_webhook_refuses_is_tried_again_within_the_tick(defs, dagster_instance, webhook):
    tick = RunAlerts(defs, dagster_instance)
    tick()
    failed = run(defs, dagster_instance, "ingest_like", "source_b", fail=True)
    webhook.refuse_next = 2
    tick()
    assert states(webhook.take()) == [("source_b", "opened", failed)]


def test_an_undelivered_check_message_waits_for_the_next_tick(defs, dagster_instance, webhook):
    tick = Ticker(defs, "alert_on_check_failure", dagster_instance)
    tick()
    failed = run(defs, dagster_instance, "materialize", "source_b", fail=True)
    webhook.refuse_next = 1
    assert "0 messages sent, 1 waiting" in tick() and webhook.take() == []
    assert "1 messages sent, 0 waiting" in tick()
    assert [(m["state"], m["run_id"]) for m in webhook.take()] == [("opened", failed)]


def test_alerts_are_off_without_the_url(defs, dagster_instance, webhook, monkeypatch):
    monkeypatch.delenv(ALERT_WEBHOOK_URL_ENV)
    tick = RunAlerts(defs, dagster_instance)
    tick()
    run(defs, dagster_instance, "ingest_like", "source_a", fail=True)
    tick()
    checks = Ticker(defs, "alert_on_check_failure", dagster_instance)
    assert checks() == f"alerts are off: {ALERT_WEBHOOK_URL_ENV} is not set"
    assert webhook.take() == []


def test_one_message_per_check_failure_incident(defs, dagster_instance, webhook):
    tick = Ticker(defs, "alert_on_check_failure", dagster_instance)
    tick()
    first = run(defs, dagster_instance, "materialize", "source_b", fail=True)
    run(defs, dagster_instance, "materialize", "source_b", fail=True)
    run(defs, dagster_instance, "materialize", "source_a", fail=False)  # passing checks say nothing
    tick()
    [opened] = webhook.take()
    assert (
        opened["kind"],
        opened["state"],
        opened["check"],
        opened["asset"],
        opened["source"],
        opened["run_id"],
        opened["severity"],
    ) == ("check_failure", "opened", "no_gaps_like", "events", "source_b", first, "ERROR")
    assert opened["description"] == "missing_ids: 11"
    fixed = run(defs, dagster_instance, "materialize", "source_b", fail=False)
    tick()
    assert [(m["check"], m["source"], m["state"], m["run_id"]) for m in webhook.take()] == [
        ("no_gaps_like", "source_b", "resolved", fixed)
    ]


def test_no_secret_leaves(defs, dagster_instance, webhook):
    tick = RunAlerts(defs, dagster_instance)
    tick()
    run(defs, dagster_instance, "ingest_like", "source_a", fail=True)
    tick()
    [message] = webhook.take()
    assert SECRET not in json.dumps(message) and "***" in message["error"]


def test_the_project_s_own_ingest_run_failing_is_alerted_with_the_drain_s_reason(
    make_mock, database_url, redis_url, dagster_instance, webhook, source_name
):
    from event_ingest.component import build_definitions
    from event_ingest.component.resources import IngestResource

    mock = make_mock(backlog=3)
    mock.control({"next": [{"kind": "status", "status": 401, "body": f"token {SECRET} expired"}]})
    source = SourceConfig(name=source_name, url=mock.url, timeout_s=1.0, headers={"X-Token": SECRET})
    project = build_definitions([source], IngestResource(database_url=database_url, redis_url=redis_url))
    tick = RunAlerts(project, dagster_instance)
    tick()
    result = project.resolve_job_def("drain").execute_in_process(
        instance=dagster_instance, partition_key=source_name, raise_on_error=False
    )
    assert not result.success
    # Nothing Dagster stored of the run (logs, failure metadata) holds the header's value either.
    stored = [str(entry) for entry in dagster_instance.all_logs(result.run_id)]
    assert any("token *** expired" in entry for entry in stored) and not any(SECRET in entry for entry in stored)
    tick()
    [message] = webhook.take()
    assert (message["job"], message["source"], message["run_id"]) == ("drain", source_name, result.run_id)
    assert message["error"] == f"source {source_name!r} at lastId=0: HTTP 401: token *** expired"


def test_one_tick_reads_every_result_since_the_last_not_one_page(defs, dagster_instance, webhook):
    # 1,000 sources each publishing a result a minute write ~500 results per 30 s tick and more on a busy
    # minute: a tick that read one page would fall behind for good. Here 3 pages' worth of passing results
    # (runless, one per check name: nothing to say) and one failure after them: one tick must reach it.
    tick = Ticker(defs, "alert_on_check_failure", dagster_instance)
    tick()
    results = 3 * EVENTS_PER_PAGE
    for i in range(results):
        dagster_instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(asset_key=dg.AssetKey("events"), check_name=f"check_{i}", passed=True)
        )
    dagster_instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=dg.AssetKey("events"), check_name="the_last_one", passed=False)
    )
    started = time.monotonic()
    said = tick()
    read_s = time.monotonic() - started
    assert said.startswith(f"{results + 1} results read, 1 messages sent"), said
    [opened] = webhook.take()
    assert (opened["check"], opened["state"]) == ("the_last_one", "opened")
    print(f"one tick read {results + 1} check results in {read_s:.2f} s")
