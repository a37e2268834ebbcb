"""Running a broken core: the chaos harness or unit tests, in processes that apply one mutant.

State directories of runs live under a temporary directory removed afterwards, whatever the
verdict (a failing chaos run keeps its state for a reader; here failing is the point).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from event_ingest.devstack.procs import kill_group, terminate_group

from .mutants import ENV

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "site"


def mutant_env(mutant: str | None) -> dict[str, str]:
    """The environment of a process tree that runs ``mutant`` (None: the real core)."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if mutant:
        env[ENV] = mutant
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _run(cmd: list[str], env: dict, timeout: float, log_path: Path) -> tuple[int | None, str]:
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            terminate_group(proc, wait_s=30)  # the harness cleans up on SIGTERM
            kill_group(proc)
            return None, ""
    return proc.returncode, out.decode(errors="replace")


def chaos_run(
    mutant: str | None, *, seed: int, seconds: float, faults: list[str] | None = None, timeout: float | None = None
) -> dict:
    """One chaos run; its report's verdict: {"ok", "failed": [checks], "returncode", "log", "kept"}.

    A mutant's run is removed whatever its verdict (failing is its point); the real core's is kept when
    it fails, for a reader (``kept``: its state directory, with every consumer's request trace)."""
    tmp = tempfile.mkdtemp(prefix="event-ingest-mutant-" if mutant else "event-ingest-real-core-")
    cmd = [
        sys.executable,
        "-m",
        "event_ingest.chaos",
        "--seconds",
        f"{seconds:g}",
        "--seed",
        str(seed),
        "--json",
        "--data-dir",
        os.path.join(tmp, "state"),
    ]
    if faults:
        cmd += ["--faults", ",".join(faults)]
    log_path = Path(tmp) / "chaos.log"
    code, out = _run(cmd, mutant_env(mutant), timeout or seconds * 4 + 180, log_path)
    log_tail = log_path.read_text(errors="replace")[-3000:]
    try:
        report = json.loads(out)
    except ValueError:
        report = None
    failed = [name for name, passed in report["checks"].items() if not passed] if report else ["(no report)"]
    ok = bool(report and report["ok"])
    kept = None
    if ok or mutant:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        kept = tmp
    return {"ok": ok, "failed": failed, "returncode": code, "log": log_tail, "report": report, "kept": kept}


def unit_run(mutant: str | None, tests: tuple[str, ...], timeout: float = 300) -> dict:
    """The unit tests ``tests`` (node ids under event_ingest_tests/) against ``mutant``: did they fail?"""
    with tempfile.TemporaryDirectory(prefix="event-ingest-mutant-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            *(f"event_ingest_tests/{t}" for t in tests),
        ]
        code, out = _run(cmd, mutant_env(mutant), timeout, Path(tmp) / "pytest.log")
    summary = out.strip().splitlines()[-1] if out.strip() else "(no output)"
    return {
        "failed": code not in (0, None) and " failed" in summary,
        "passed": code == 0,
        "summary": summary,
        "output": out[-3000:],
    }
