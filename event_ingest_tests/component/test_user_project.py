"""event-ingest the way a Dagster user meets it: a new project made by `create-dagster`, event-ingest installed
into that project's own environment, two instances scaffolded with `dg`, checked, listed side by side with the
project's own asset, and one drain launched with `dg launch` against a mock source, its rows read in Postgres.

The environment is a fresh venv in a temporary folder. This checkout is installed into it as a package (a wheel
built from it, not an editable link, so what ships is what is tested: the entry point `dg` finds the component
by, the project's own defs.yaml as package data), with `dagster-dg-cli` as the project's dev group asks;
versions are constrained to requirements/dev.lock so that uv takes them from its cache (pip, when uv is missing,
resolves them afresh).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from event_ingest_tests.component.test_component import clean_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TIMEOUT_S = 900


def sh(*cmd: str | Path, env: dict, cwd: Path) -> str:
    """The command's stdout (it must succeed)."""
    done = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_a_new_dagster_project_adds_two_instances_checks_lists_and_launches_an_ingest(
    tmp_path, make_mock, database_url, redis_url, store
):
    env = clean_env(tmp_path)
    sh(BIN / "create-dagster", "project", "userproj", "--no-uv-sync", env=env, cwd=tmp_path)
    project = tmp_path / "userproj"
    venv = project / ".venv"
    sh(sys.executable, "-m", "venv", venv, env=env, cwd=tmp_path)
    python = venv / "bin" / "python"
    packages = [str(ROOT), "dagster-dg-cli", "-e", str(project)]
    if (BIN / "uv").exists():
        sh(BIN / "uv", "pip", "install", "-q", "--python", python, "-c", ROOT / "requirements/dev.lock", *packages,
           env=env, cwd=tmp_path)  # fmt: skip
    else:
        sh(python, "-m", "pip", "install", "-q", *packages, env=env, cwd=tmp_path)
    installed = sh(python, "-c", "import event_ingest; print(event_ingest.__file__)", env=env, cwd=tmp_path)
    assert installed.startswith(str(venv)), installed  # a copy in the project's environment, not this checkout

    user = {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    dg = venv / "bin" / "dg"
    assert "event_ingest.EventSources" in sh(dg, "list", "components", "--json", env=user, cwd=project)

    mock = make_mock(backlog=250)
    partner, billing = f"p_{uuid.uuid4().hex[:8]}", f"b_{uuid.uuid4().hex[:8]}"
    sh(dg, "scaffold", "defs", "event_ingest.EventSources", "partner_events", "--url", mock.url, "--source", partner,
       env=user, cwd=project)  # fmt: skip
    params = json.dumps({"url": "http://127.0.0.1:9/events", "source": billing})
    sh(dg, "scaffold", "defs", "event_ingest.EventSources", "billing_events", "--json-params", params,
       env=user, cwd=project)  # fmt: skip
    defs_dir = project / "src" / "userproj" / "defs"
    assert (defs_dir / "partner_events" / "defs.yaml").is_file() and (
        defs_dir / "billing_events" / "defs.yaml"
    ).is_file()
    (defs_dir / "reports.py").write_text(
        "import dagster as dg\n\n\n@dg.asset(deps=[dg.AssetKey(['partner_events', 'events'])])\n"
        "def partner_report() -> None:\n    return None\n"
    )

    sh(dg, "check", "defs", env=user, cwd=project)
    defs = json.loads(sh(dg, "list", "defs", "--json", env=user, cwd=project))
    assets = {a["asset_key"] for a in defs["assets"]}
    assert {"partner_events/events", "billing_events/events", "partner_report"} <= assets
    assert {"partner_events/events_per_minute", "billing_events/events_per_minute"} <= assets
    jobs = {j["name"] for j in defs["jobs"]}
    assert {"partner_events_ingest", "partner_events_drain", "billing_events_ingest", "billing_events_drain"} <= jobs
    sensors = {s["name"] for s in defs["sensors"]}
    assert {f"partner_events_ingest_{partner}", f"billing_events_ingest_{billing}"} <= sensors

    services = {**user, "EVENT_INGEST_DATABASE_URL": database_url, "EVENT_INGEST_REDIS_URL": redis_url}
    sh(dg, "launch", "--job", "partner_events_drain", "--partition", partner, env=services, cwd=project)
    assert store.event_ids(partner) == list(range(1, 251))
    seen = mock.stats()
    assert seen["gaps_under_200ms"] == 0 and seen["requests"] >= 1
    shutil.rmtree(venv, ignore_errors=True)
