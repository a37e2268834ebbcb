"""`event-ingest dev` for real, as a user runs it: a subprocess with no EVENT_INGEST_* URLs set,
so it starts its own Postgres and Redis, the mock sources and Dagster; then Ctrl-C (SIGINT),
after which not one of its processes may be left."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from event_ingest.devstack.procs import free_port
from event_ingest.devstack.services import dagster_storage_url

ENV_VARS = (
    "EVENT_INGEST_DATABASE_URL",
    "EVENT_INGEST_REDIS_URL",
    "EVENT_INGEST_SOURCES",
    "EVENT_INGEST_DAGSTER_DATABASE_URL",
    "DAGSTER_HOME",
)
SOURCES = ["source1", "source2", "source3"]
INSTANCE_SENSORS = ["alert_on_run_failure", "alert_on_run_recovery", "alert_on_check_failure", "freshness_watch"]


# ----------------------------------------------------------------------------- helpers


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(n: int = 3, avoid: tuple[int, ...] = ()) -> int:
    """A port p such that p .. p+n-1 are all free now."""
    for _ in range(100):
        base = free_port()
        if base + n <= 65535 and all(_bindable(base + i) and base + i not in avoid for i in range(n)):
            return base
    raise RuntimeError("no run of free ports found")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> dict[int, str]:
    """{pid: start time} of `root` and all its descendants, from /proc."""
    parent: dict[int, int] = {}
    start: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parent[int(entry)], start[int(entry)] = int(st[1]), st[19]
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in start and pid not in tree:
            tree[pid] = start[pid]
            todo += [child for child, ppid in parent.items() if ppid == pid]
    return tree


def still_running(tree: dict[int, str]) -> list[str]:
    """The processes of `tree` that are still there (a zombie counts as gone; so does a pid now
    used by another process)."""
    left = []
    for pid, started in tree.items():
        st = _stat(pid)
        if st is not None and st[0] not in ("Z", "X") and st[19] == started:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            except OSError:
                cmd = "?"
            left.append(f"{pid} {cmd}")
    return left


class Dev:
    """`python -m event_ingest.cli dev ...` in tmp_path, output in a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.state_dir = tmp_path / "state"
        self.out_path = tmp_path / f"dev-{time.monotonic_ns()}.out"
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        self.t0 = time.monotonic()
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "event_ingest.cli", "dev", "--data-dir", str(self.state_dir), *args],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-n:])

    def stack(self, timeout: float, ready: bool = False) -> dict:
        """stack.json once written (and, with `ready`, once the UI answered)."""
        path = self.state_dir / "stack.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"event-ingest dev exited with {self.proc.returncode}:\n{self.tail()}"
            try:
                data = json.loads(path.read_text())
                if data["ready"] or not ready:
                    return data
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"no {'ready ' if ready else ''}stack.json within {timeout}s:\n{self.tail()}")

    def interrupt(self, timeout: float, sig: int = signal.SIGINT) -> int:
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"event-ingest dev did not exit within {timeout}s of {sig!r}:\n{self.tail()}"
            ) from None

    def cleanup(self) -> None:
        """After a failed test: stop it, and whatever it left, hard."""
        tree = process_tree(self.proc.pid)
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        for line in still_running(tree):
            pid = int(line.split()[0])
            try:
                if os.getpgid(pid) == pid:  # a session leader: its whole group
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def dev(tmp_path):
    started: list[Dev] = []

    def start(*args: str) -> Dev:
        d = Dev(tmp_path, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.cleanup()


def status_json(env: dict[str, str]) -> list[dict]:
    res = subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", "status", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def events_per_source(database_url: str) -> dict[str, int]:
    try:
        with psycopg.connect(database_url, connect_timeout=3) as conn:
            rows = conn.execute("SELECT source, count(*) FROM events GROUP BY source").fetchall()
    except psycopg.Error:
        return {}
    return dict(rows)


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


# ------------------------------------------------------------------------------- tests


def test_dagster_storage_url_names_psycopg2():
    assert dagster_storage_url("postgresql://u@h:5/db") == "postgresql+psycopg2://u@h:5/db"
    assert dagster_storage_url("postgres://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert dagster_storage_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


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
    assert _bindable(ui_port) and all(_bindable(base + i) for i in range(3))


def test_no_dagster_starts_services_and_sources(dev, tmp_path):
    base = free_port_base()
    d = dev("--no-dagster", "--sources-port-base", str(base))
    stack = d.stack(timeout=60, ready=True)

    assert stack["dagster"] is None
    assert not (d.state_dir / "dagster_home").exists()
    urls = {name: f"http://127.0.0.1:{base + i}/events" for i, name in enumerate(SOURCES)}
    assert stack["sources"]["urls"] == urls
    sources_file = Path(stack["env"]["EVENT_INGEST_SOURCES"])
    assert sources_file.parent == d.state_dir
    for name, url in urls.items():
        assert f"name: {name}" in sources_file.read_text() and f"url: {url}" in sources_file.read_text()

    # The mock sources behave like the original system's: 3, 2 and 4 new events per answer.
    for (name, url), batch in zip(urls.items(), (3, 2, 4)):
        for _ in range(50):  # 20% of answers are injected 500s
            r = httpx.get(url, params={"lastId": 10}, timeout=5)
            if r.status_code == 200:
                break
        assert [e["id"] for e in r.json()["events"]] == list(range(11, 11 + batch)), name

    assert redis.Redis.from_url(stack["redis"]["url"]).ping()
    assert [(r["source"], r["cursor"]) for r in status_json(stack["env"])] == [(s, 0) for s in SOURCES]
    assert stack["postgres"]["dagster_url"].startswith("postgresql+psycopg2://")

    # One dev stack per state dir.
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "event_ingest.cli",
            "dev",
            "--no-dagster",
            "--data-dir",
            str(d.state_dir),
            "--sources-port-base",
            str(free_port_base()),
        ],
        env={k: v for k, v in os.environ.items() if k not in ENV_VARS},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2 and f"another dev stack (pid {d.proc.pid})" in second.stderr, second.stderr
    assert (d.state_dir / "stack.json").exists()  # the refused one did not touch the running one's

    tree = process_tree(d.proc.pid)
    assert len(tree) >= 5, tree  # postgres (and its workers), valkey, 3 sources
    assert d.interrupt(timeout=30) == 0, d.tail()
    left = still_running(tree)
    assert not left, "processes left after Ctrl-C:\n" + "\n".join(left)
    assert not (d.state_dir / "stack.json").exists()


def test_a_restart_resumes_on_the_same_state(dev, tmp_path):
    base = free_port_base()
    first = dev("--no-dagster", "--sources-port-base", str(base))
    stack = first.stack(timeout=60, ready=True)
    with psycopg.connect(stack["postgres"]["url"], autocommit=True) as conn:
        conn.execute("UPDATE source_state SET cursor = 41 WHERE source = 'source2'")
    redis.Redis.from_url(stack["redis"]["url"]).set("dev-test-marker", "kept")
    assert first.interrupt(timeout=30, sig=signal.SIGTERM) == 0, first.tail()  # SIGTERM stops it cleanly too

    second = dev("--no-dagster", "--sources-port-base", str(base))
    again = second.stack(timeout=60, ready=True)
    assert again["postgres"]["url"] == stack["postgres"]["url"]  # the remembered port
    assert {r["source"]: r["cursor"] for r in status_json(again["env"])}["source2"] == 41
    # Postgres keeps the state; Redis is not persisted, as the README advises (leases and gate slots only).
    restarted = redis.Redis.from_url(again["redis"]["url"])
    assert restarted.get("dev-test-marker") is None
    assert restarted.config_get("appendonly") == {"appendonly": "no"} and restarted.config_get("save")["save"] == ""
    assert second.interrupt(timeout=30) == 0, second.tail()


def test_no_mock_sources_still_lists_them_for_you_to_serve(dev, tmp_path):
    base = free_port_base()
    d = dev("--no-dagster", "--no-mock-sources", "--sources-port-base", str(base))
    stack = d.stack(timeout=60, ready=True)
    assert stack["sources"]["children"] == [] and not stack["sources"]["mock"]
    assert stack["sources"]["urls"]["source1"] == f"http://127.0.0.1:{base}/events"
    assert _bindable(base)  # nothing of ours listens there
    assert d.interrupt(timeout=30) == 0, d.tail()


def test_a_dying_child_stops_everything_and_says_which(dev, tmp_path):
    d = dev("--no-dagster", "--sources-port-base", str(free_port_base()))
    stack = d.stack(timeout=60, ready=True)
    victim = next(c for c in stack["sources"]["children"] if c["name"] == "source2")
    tree = process_tree(d.proc.pid)

    os.kill(victim["pid"], signal.SIGKILL)
    assert d.proc.wait(30) == 1, d.tail()
    assert "mock source source2 exited unexpectedly" in d.output and victim["log"] in d.output, d.tail()
    left = still_running(tree)
    assert not left, "processes left:\n" + "\n".join(left)


def test_a_taken_port_fails_at_once_naming_it(dev, tmp_path):
    base = free_port_base()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        d = dev("--no-dagster", "--sources-port-base", str(base))
        assert d.proc.wait(30) == 2, d.tail()
    errors = [line for line in d.output.splitlines() if str(base + 1) in line]
    assert errors and "already in use" in errors[0] and "--sources-port-base" in errors[0], d.tail()
    assert not (d.state_dir / "postgres").exists()  # failed before starting anything
