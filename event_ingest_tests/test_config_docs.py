"""What the declaration documents, and where: the committed schema, the `config` commands, the README's
tables and every EVENT_INGEST_* name."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from event_ingest import config
from event_ingest.config import (
    SCHEMA_FILE,
    RunSettings,
    SourceConfig,
    load_config,
    load_sources,
    sources_schema,
)
from event_ingest_tests.test_config import TOKEN, write

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_schema_is_the_declarations():
    committed = json.loads((ROOT / SCHEMA_FILE).read_text())
    assert committed == sources_schema(), f"{SCHEMA_FILE} is stale: run `event-ingest config schema > {SCHEMA_FILE}`"
    assert set(committed["$defs"]["SourceConfig"]["properties"]) == set(SourceConfig.model_fields)
    assert committed["$defs"]["SourceConfig"]["required"] == ["name", "url"]


def test_config_schema_command_prints_the_committed_schema():
    done = run_cli("config", "schema")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads((ROOT / SCHEMA_FILE).read_text())


def test_config_check_prints_one_line_per_source_and_hides_header_values(tmp_path):
    path = write(
        tmp_path,
        """
sources:
  - name: source1
    url: http://127.0.0.1:3001/events
  - name: partner
    url: https://ingest:pw-1d2e3f@events.example.com/v1/events
    page_size: 500
    headers: {X-Api-Key: literal-key-in-file}
runs:
  sources_per_run: 10
""",
    )
    done = run_cli("config", "check", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "source1  http://127.0.0.1:3001/events",
        'partner  https://ingest:***@events.example.com/v1/events  page_size=500  headers={"X-Api-Key": "***"}',
        "runs:  sources_per_run=10",
    ]
    assert "literal-key-in-file" not in done.stdout + done.stderr and "pw-1d2e3f" not in done.stdout


def test_config_check_of_a_bad_file_is_one_line_and_exit_2(tmp_path):
    path = write(tmp_path, "sources:\n  - {name: a, url: 'http://h/e', page_size: 0}\n")
    done = run_cli("config", "check", str(path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"event-ingest: {path}: source 'a': field 'page_size': 0 is not valid; expected an integer from 1 to 100000"
    ]


def test_the_readme_example_and_the_compose_sources_load(tmp_path, monkeypatch, tls_files):
    monkeypatch.setenv("PARTNER_TOKEN", f"Bearer {TOKEN}")
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Sources file\n.*?```yaml\n(.*?)```", readme, re.S).group(1)
    assert example.startswith("# yaml-language-server: $schema=./sources.schema.json\n")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "partner-ca.pem").write_bytes(tls_files.ca_file.read_bytes())
    loaded = load_config(write(tmp_path, example))
    assert [s.name for s in loaded.sources] == ["source1", "source2", "partner"]
    assert [s.name for s in load_sources(ROOT / "deploy" / "sources.compose.yaml")] == ["source1", "source2", "source3"]


def fields_table(schema: dict, definition: str) -> str:
    """The README's table of one section of the sources file, from the JSON schema (the declaration)."""
    model = schema["$defs"][definition]
    rows = ["| field | default | range | meaning |", "|---|---|---|---|"]
    for name, prop in model["properties"].items():
        if name in model.get("required", []):
            default = "required"
        elif prop.get("default") in (None, {}, []):
            default = "none"
        else:
            default = f"{prop['default']:g}" if isinstance(prop["default"], float) else str(prop["default"])
        bounds = next((p for p in [prop, *prop.get("anyOf", [])] if "minimum" in p), None)
        span = f"{bounds['minimum']} to {bounds['maximum']}" if bounds else ""
        meaning = prop.get("description", "").replace("|", "\\|")
        rows.append(f"| `{name}` | {default} | {span} | {meaning} |")
    return "\n".join(rows) + "\n"


def undocumented(schema: dict) -> list[str]:
    """Fields whose declaration says nothing about them."""
    return [
        f"{definition}.{name}"
        for definition, model in schema["$defs"].items()
        for name, prop in model["properties"].items()
        if not prop.get("description", "").strip()
    ]


def readme_problems(readme: str, schema: dict) -> list[str]:
    problems = [f"{field} has no description" for field in undocumented(schema)]
    for definition in ("SourceConfig", "RunSettings"):
        table = fields_table(schema, definition)
        if table not in readme:
            problems.append(f"README.md lacks the {definition} table as declared; it is:\n{table}")
    return problems


def test_every_field_is_documented_in_the_declaration_and_the_readme():
    assert readme_problems((ROOT / "README.md").read_text(), sources_schema()) == []


def test_the_documentation_check_fails_on_a_field_without_docs_or_a_stale_row():
    readme, schema = (ROOT / "README.md").read_text(), sources_schema()

    class Undocumented(SourceConfig):
        colour: str = "red"  # declared without a description

    schema_with_extra = {**schema, "$defs": {**schema["$defs"], "SourceConfig": Undocumented.model_json_schema()}}
    problems = readme_problems(readme, schema_with_extra)
    assert "SourceConfig.colour has no description" in problems
    assert any("lacks the SourceConfig table" in p and "`colour`" in p for p in problems)
    stale = readme.replace("| `page_size` | 1000 |", "| `page_size` | 500 |")
    assert [p.split(";")[0] for p in readme_problems(stale, schema)] == [
        "README.md lacks the SourceConfig table as declared"
    ]


def env_names_in_code() -> dict[str, list[str]]:
    """Every EVENT_INGEST_* name written as a string in the package's code, with the files that write it."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "event_ingest").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.fullmatch(node.value):
                found.setdefault(node.value, []).append(str(path.relative_to(ROOT)))
    return found


ENV_NAME = re.compile(r"EVENT_INGEST_[A-Z0-9_]+")


def test_each_environment_variable_is_named_once_and_documented():
    found = env_names_in_code()
    assert {"EVENT_INGEST_SOURCES", "EVENT_INGEST_DATABASE_URL", "EVENT_INGEST_DAGSTER_DATABASE_URL"} <= set(found)
    assert {name: files for name, files in found.items() if len(files) > 1} == {}
    # The bootstrap (`python3 -m event_ingest`) runs before the dependencies the config package imports
    # are installed, so its own switch stays in it; every other name lives in config/env.py.
    assert {
        name: files
        for name, files in found.items()
        if files != ["event_ingest/config/env.py"] and name != "EVENT_INGEST_NO_UV"
    } == {}
    declared = {value for key, value in vars(config.env).items() if key.endswith("_ENV") and isinstance(value, str)}
    assert declared == set(found) - {"EVENT_INGEST_NO_UV"}
    environment = (ROOT / "README.md").read_text().split("## Environment\n", 1)[1].split("\n## ", 1)[0]
    assert sorted(name for name in declared if f"`{name}`" not in environment) == []


def test_the_lease_defaults_come_from_config():
    from event_ingest.cli import build_parser
    from event_ingest.core import DrainOptions
    from event_ingest.core.worker import WorkerOptions

    ingest = build_parser(["ingest", "a"]).parse_args(["ingest", "a"])
    assert (ingest.lease_ttl, ingest.lease_wait) == (config.LEASE_TTL_S, config.LEASE_WAIT_S)
    assert DrainOptions().lease_ttl_s == WorkerOptions().lease_ttl_s == RunSettings().lease_ttl_s == config.LEASE_TTL_S
    assert WorkerOptions.from_settings(RunSettings()) == WorkerOptions()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_INGEST_")}
    return subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
