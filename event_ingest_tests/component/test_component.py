"""The component as a Dagster project loads it: defs folders with EventSources instances beside a project's own
asset, loaded by `load_from_defs_folder` from a throwaway package on disk; the project's own code location
loaded by `dg` with nothing set, and with service URLs that record any connection; no private Dagster API."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import dagster as dg
import pytest

from event_ingest.component import EventSources
from event_ingest.component.component import EventSourcesScaffolder, EventSourcesScaffoldParams
from event_ingest.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


class Project:
    """A Dagster project on disk: pyproject.toml with [tool.dg], a package, its defs folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.package = f"proj_{uuid.uuid4().hex[:8]}"
        self.defs = root / self.package / "defs"
        self.defs.mkdir(parents=True)
        (root / self.package / "__init__.py").write_text("")
        (self.defs / "__init__.py").write_text("")
        (root / "pyproject.toml").write_text(
            f'[project]\nname = "{self.package}"\nversion = "0"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
            f'[tool.dg.project]\nroot_module = "{self.package}"\n'
        )

    def instance(self, folder: str, yaml_text: str) -> Path:
        path = self.defs / folder
        path.mkdir(parents=True, exist_ok=True)
        (path / "defs.yaml").write_text(yaml_text)
        return path

    def scaffold(self, folder: str, **params) -> Path:
        request = dg.ScaffoldRequest(
            type_name="event_ingest.EventSources",
            target_path=self.defs / folder,
            scaffold_format="yaml",
            project_root=self.root,
            params=EventSourcesScaffoldParams(**params),
        )
        EventSourcesScaffolder().scaffold(request)
        return self.defs / folder / "defs.yaml"

    def load(self) -> dg.Definitions:
        sys.path.insert(0, str(self.root))
        try:
            return dg.load_from_defs_folder(project_root=self.root)
        finally:
            sys.path.remove(str(self.root))


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path)


def inline(prefix: str, *sources: str, extra: str = "") -> str:
    entries = "".join(f"    - {{name: {s}, url: 'http://127.0.0.1:9/events'}}\n" for s in sources)
    return (
        "type: event_ingest.EventSources\nattributes:\n"
        f"  asset_key_prefix: [{prefix}]\n  name_prefix: {prefix}_\n  group_name: {prefix}\n"
        f"  sources:\n{entries}{extra}"
    )


def error_text(exc: BaseException) -> str:
    """The whole chain: Dagster wraps a component's error in its own."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def test_two_instances_and_the_project_s_own_asset_live_in_one_code_location(project):
    one, two = unique("p"), unique("b")
    project.instance("partner", inline("partner", one, extra="  runs: {sources_per_run: 1}\n"))
    billing = project.instance(
        "billing",
        "type: event_ingest.EventSources\nattributes:\n  asset_key_prefix: [billing]\n  name_prefix: billing_\n"
        "  sources_file: sources.yaml\n",
    )
    (billing / "sources.yaml").write_text(f"sources:\n  - {{name: {two}, url: 'http://127.0.0.1:9/events'}}\n")
    (project.defs / "mine.py").write_text(
        "import dagster as dg\n\n@dg.asset(deps=[dg.AssetKey(['partner', 'events'])])\ndef my_report():\n    return 1\n"
    )
    defs = project.load()
    dg.Definitions.validate_loadable(defs)

    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"partner/events", "partner/events_per_minute", "billing/events", "billing/events_per_minute"} <= keys
    assert "my_report" in keys  # the project's own asset, downstream of an instance's
    jobs = {j.name for j in defs.jobs}
    assert {"partner_ingest", "partner_drain", "partner_replay", "billing_ingest", "billing_drain"} <= jobs
    assert not {"delete_old_runs", "ingest"} & jobs  # retention is opt-in; nothing unprefixed
    sensors = {s.name for s in defs.sensors}
    assert {f"partner_ingest_{one}", f"billing_ingest_{two}", "partner_alert_on_run_failure"} <= sensors
    assert defs.resolve_assets_def(dg.AssetKey(["partner", "events"])).partitions_def.get_partition_keys() == [one]
    assert defs.resolve_assets_def(dg.AssetKey(["billing", "events"])).partitions_def.get_partition_keys() == [two]
    checks = {(key.asset_key.to_user_string(), key.name) for c in defs.asset_checks for key in c.check_keys}
    assert {("partner/events", "no_gaps"), ("billing/events", "fresh")} <= checks
    # One resource object under the shared key: Dagster merges the two instances' definitions.
    assert list(defs.resources) == ["event_ingest"]
    # A sensor's run request names its own job's op.
    sensor = defs.resolve_sensor_def(f"partner_ingest_{one}")
    assert sensor.job_name == "partner_ingest"


def test_a_source_configured_by_two_instances_is_one_clear_error_at_load(project):
    shared = unique("s")
    project.instance("partner", inline("partner", shared))
    project.instance("billing", inline("billing", unique("b"), shared))
    with pytest.raises(Exception) as raised:
        project.load()
    text = error_text(raised.value)
    assert f"source {shared!r} is also configured in" in text
    assert "partner/defs.yaml" in text and "billing/defs.yaml" in text
    assert "a source name is global" in text


def test_a_bad_source_in_defs_yaml_is_one_line_naming_the_file_the_source_and_the_field(project):
    name = unique("p")
    project.instance("partner", inline("partner", name).replace("/events'}", "/events', min_interval_ms: 150}"))
    with pytest.raises(Exception) as raised:
        project.load()
    [line] = {line.strip() for line in error_text(raised.value).splitlines() if "min_interval_ms': 150" in line}
    assert f"partner/defs.yaml: source {name!r}: field 'min_interval_ms': 150 is not valid" in line
    assert line.endswith("expected an integer of milliseconds from 200 to 3600000")


def test_names_dagster_refuses_are_refused_at_load_with_the_attribute(project):
    project.instance("partner", inline("partner", unique("p")).replace("name_prefix: partner_", "name_prefix: p-1"))
    with pytest.raises(Exception) as raised:
        project.load()
    assert "name_prefix: 'p-1' is not a Dagster name" in error_text(raised.value)


def test_two_scaffolded_instances_load_side_by_side_and_keep_their_own_names(project):
    first = project.scaffold(unique("Partner-Events"), url="http://127.0.0.1:3001/events")
    project.scaffold(unique("billing"))
    text = first.read_text()
    assert text.startswith("type: event_ingest.EventSources\n") and 'url: "http://127.0.0.1:3001/events"' in text
    defs = project.load()
    dg.Definitions.validate_loadable(defs)
    prefixes = {k.path[0] for k in defs.resolve_all_asset_keys()}
    assert len(prefixes) == 2 and all(p.startswith(("partner_events_", "billing_")) for p in prefixes)
    assert len([s for s in defs.sensors if "_ingest_" in s.name]) == 2


def test_inline_sources_are_the_sources_file_schema_in_the_component_s_yaml_schema():
    schema = EventSources.get_model_cls().model_json_schema()
    properties = schema["properties"]
    source = properties["sources"]["items"]
    assert set(source["properties"]) >= {"name", "url", "page_size", "min_interval_ms", "headers", "ca_file"}
    assert source["properties"]["min_interval_ms"]["minimum"] == 200
    assert set(properties["runs"]["properties"]) >= {"sources_per_run", "run_seconds", "handoff_s"}
    assert {"asset_key_prefix", "name_prefix", "group_name", "resource_key", "sources_file"} <= set(properties)


def test_no_sources_anywhere_loads_nothing_and_says_what_to_set(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("EVENT_INGEST_SOURCES", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./sources.yaml here
    with caplog.at_level("WARNING", logger="event_ingest.component"):
        defs = dg.component_defs(component=EventSources())
    assert not list(defs.assets or []) and not list(defs.sensors or [])
    [line] = [r.getMessage() for r in caplog.records]
    assert "no sources" in line and "EVENT_INGEST_SOURCES" in line and "event-ingest dev" in line
    # Named explicitly, a missing file is an error, not an empty code location.
    monkeypatch.setenv("EVENT_INGEST_SOURCES", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="sources file not found"):
        dg.component_defs(component=EventSources())


def private_dagster_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each use of a private Dagster module: an import of `dagster._...`, `import_module` of one,
    or an attribute `_...` of the `dagster` module (as `dagster` or `dg`). Strings that merely contain the text
    (a process's command line, say) are not uses."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("dagster._")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster._"):
            found.append((node.lineno, f"from {node.module}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "dagster":
            found += [(node.lineno, f"dagster.{a.name}") for a in node.names if a.name.startswith("_")]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("dagster", "dg")
            and node.attr.startswith("_")
        ):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("dagster._")
        ):
            found.append((node.lineno, f"import_module({node.args[0].value!r})"))
    return found


def test_the_package_uses_no_private_dagster_module():
    """Public Dagster APIs only, anywhere in event_ingest/ (the tests may reach further)."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in sorted((ROOT / "event_ingest").rglob("*.py"))
        for line, what in private_dagster_uses(path.read_text(encoding="utf-8"))
    ]
    assert not found, "private Dagster modules used:\n" + "\n".join(found)


def test_the_private_module_scan_finds_each_kind_of_use():
    uses = private_dagster_uses(
        "import dagster._core.events\nfrom dagster._core.scheduler.instigation import InstigatorStatus\n"
        "from dagster import _check\nimport dagster as dg\nx = dg._core\nimportlib.import_module('dagster._daemon')\n"
        "ok = 'dagster._daemon' in command\n"
    )
    assert [line for line, _ in uses] == [1, 2, 3, 5, 6]


class Listener:
    """A TCP port that accepts and counts connections: a Postgres or Redis URL nothing may dial."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def dg_command(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "dg"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def clean_env(tmp_path: Path, **extra: str) -> dict:
    """No EVENT_INGEST_* and no DAGSTER_HOME: a new user's shell, with the project's venv active."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENT_INGEST_", "DAGSTER_"))}
    env.update(VIRTUAL_ENV=str(Path(sys.executable).parent.parent), HOME=str(tmp_path), **extra)
    return env


def test_dg_loads_the_project_with_nothing_set_and_says_what_to_set(tmp_path):
    """In the checkout (no sources.yaml, no variable): `dg check defs` passes and says, in one line, what to set."""
    assert not (ROOT / "sources.yaml").exists()
    done = dg_command("check", "defs", env=clean_env(tmp_path), cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "Stack Trace" not in output
    [said] = [line for line in output.splitlines() if "no event-ingest definitions" in line]
    assert "EVENT_INGEST_SOURCES" in said and "event-ingest dev" in said


def test_loading_the_definitions_touches_neither_postgres_nor_redis(tmp_path):
    """With a sources file and service URLs pointing at ports that record every connection: `dg check defs` and
    `dg list defs` load everything and dial nothing."""
    postgres, redis_port = Listener(), Listener()
    source = unique("l")
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - {{name: {source}, url: 'http://127.0.0.1:9/events'}}\n")
    env = clean_env(
        tmp_path,
        EVENT_INGEST_SOURCES=str(sources),
        EVENT_INGEST_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{postgres.port}/events",
        EVENT_INGEST_REDIS_URL=f"redis://127.0.0.1:{redis_port.port}/0",
    )
    try:
        checked = dg_command("check", "defs", env=env, cwd=ROOT)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        listed = dg_command("list", "defs", "--json", env=env, cwd=ROOT)
        assert listed.returncode == 0, listed.stderr
        names = json.dumps(json.loads(listed.stdout))
        for name in ("events", "ingest", "drain", f"ingest_{source}", "no_gaps", "fresh", "delete_old_runs"):
            assert f'"{name}' in names or f"/{name}" in names or name in names
        assert (postgres.connections, redis_port.connections) == (0, 0)
    finally:
        postgres.close()
        redis_port.close()
