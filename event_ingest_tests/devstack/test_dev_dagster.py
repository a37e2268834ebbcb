"""`event-ingest dev` with Dagster, for real: events from every source in Postgres, the asset, its
checks and the sensors in the UI, then Ctrl-C, after which not one of its processes may be left."""

from __future__ import annotations

import time

import httpx
import pytest

from event_ingest.devstack.procs import free_port

from .devproc import SOURCES, bindable, events_per_source, free_port_base, process_tree, status_json, still_running

INSTANCE_SENSORS = ["alert_on_run_failure", "alert_on_run_recovery", "alert_on_check_failure", "freshness_watch"]


DAGSTER_QUERY = """
{
  assetOrError(assetKey: {path: ["events"]}) {
    __typename
    ... on Asset {
      definition {
        partitionKeys
        assetChecksOrError { __typename ... on AssetChecks { checks { name } } }
      }
    }
  }
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name sensors { name sensorState { status } } } }
  }
}
"""


def dagster_view(ui_url: str) -> dict | None:
    """What the UI shows of the asset and the sensors, None while not answering."""
    try:
        r = httpx.post(f"{ui_url}/graphql", json={"query": DAGSTER_QUERY}, timeout=10)
        data = r.json()["data"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    asset = data["assetOrError"]
    if asset["__typename"] != "Asset" or not asset["definition"]:
        return None
    definition = asset["definition"]
    checks = definition["assetChecksOrError"]
    sensors = {
        s["name"]: s["sensorState"]["status"]
        for repo in data["repositoriesOrError"].get("nodes", [])
        for s in repo["sensors"]
    }
    return {
        "partitions": sorted(definition["partitionKeys"]),
        "checks": sorted(c["name"] for c in checks.get("checks", [])),
        "sensors": sensors,
    }


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_dev_runs_everything_and_ctrl_c_stops_everything(dev, tmp_path):
    ui_port = free_port()
    base = free_port_base(avoid=(ui_port,))
    d = dev("--port", str(ui_port), "--sources-port-base", str(base))

    stack = d.stack(timeout=120)
    assert stack["postgres"]["embedded"] and stack["redis"]["embedded"]
    assert stack["sources"]["urls"] == {name: f"http://127.0.0.1:{base + i}/events" for i, name in enumerate(SOURCES)}
    ui_url = stack["dagster"]["url"]
    assert ui_url == f"http://127.0.0.1:{ui_port}"
    # The schema is applied before Dagster starts: `event-ingest status` works with the printed exports.
    assert sorted(r["source"] for r in status_json(stack["env"])) == SOURCES

    # (a) events from every source in Postgres, (b) Dagster shows the asset, its checks and the sensors.
    t_events = t_ui = None
    view = None
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and (t_events is None or t_ui is None):
        assert d.proc.poll() is None, f"event-ingest dev exited with {d.proc.returncode}:\n{d.tail()}"
        if t_events is None:
            counts = events_per_source(stack["postgres"]["url"])
            if all(counts.get(s, 0) > 0 for s in SOURCES):
                t_events = time.monotonic() - d.t0
        if t_ui is None:
            view = dagster_view(ui_url)
            if view is not None and len(view["sensors"]) == len(SOURCES) + len(INSTANCE_SENSORS):
                t_ui = time.monotonic() - d.t0
        time.sleep(1)
    assert t_events is not None, f"not all sources had events in Postgres within 150s:\n{d.tail()}"
    assert t_ui is not None, f"the Dagster UI did not show the asset and sensors within 150s:\n{d.tail()}"
    print(
        f"\nevent-ingest dev: first events of all sources in Postgres after {t_events:.1f}s, "
        f"UI answering with asset and sensors after {t_ui:.1f}s"
    )

    assert view["partitions"] == SOURCES
    assert {"no_gaps", "cursor_matches_max_id"} <= set(view["checks"])
    # The alert sensors run too (they skip while EVENT_INGEST_ALERT_WEBHOOK_URL is unset), and the freshness watch.
    assert view["sensors"] == {
        **{f"ingest_{s}": "RUNNING" for s in SOURCES},
        **{a: "RUNNING" for a in INSTANCE_SENSORS},
    }
    d.stack(timeout=30, ready=True)  # the summary is printed once the UI answers
    assert "event-ingest dev is running" in d.output and ui_url in d.output
    for k, v in stack["env"].items():
        assert f"export {k}={v}" in d.output

    tree = process_tree(d.proc.pid)
    assert len(tree) > 10, tree  # postgres, valkey, 3 sources, dagster dev, webserver, daemon, code server, runs...
    rc = d.interrupt(timeout=60)
    assert rc == 0, d.tail()
    left = still_running(tree)
    assert not left, "processes left after Ctrl-C:\n" + "\n".join(left)
    assert not (d.state_dir / "stack.json").exists()
    assert bindable(ui_port) and all(bindable(base + i) for i in range(3))
