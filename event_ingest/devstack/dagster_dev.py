"""`dagster dev` under the dev stack: the webserver, daemon, code server and runs, in one process
group of their own, with DAGSTER_HOME under the state dir; its output shown on our stdout and kept
in logs/dagster.log; ready once the UI answers with the code loaded.

Stopping it must leave no run "running" in Dagster's storage and no process behind:

    1. SIGINT to dagster dev alone. It stops its webserver and daemon (so no sensor starts
       another run) but leaves its code server, and the run workers under it, running.
    2. SIGINT to the rest of its process group, as a Ctrl-C in a terminal would. The code
       server exits and each run worker ends its run as interrupted (drains commit page by
       page, so nothing is lost), recording that while Postgres is still up.
    3. Whatever still runs after that is killed: the process group, and every descendant
       seen in /proc before signalling.

A further Ctrl-C during 1 or 2 skips the waiting.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import event_ingest

from .child import Child
from .dagster_ui import DagsterUI
from .errors import DevError
from .procs import HOST, alive, killpg, process_tree, signal_pid, sweep
from .runtime import Console, Interrupts

UI_READY_TIMEOUT_S = 180.0
DAGSTER_STOP_TIMEOUT_S = 20.0
RUN_STOP_TIMEOUT_S = 15.0


def project_dir() -> Path:
    """The checkout the package runs from (it holds deploy/dagster.yaml and workspace.yaml)."""
    return Path(event_ingest.__file__).resolve().parent.parent


def project_files() -> tuple[Path, Path]:
    """(deploy/dagster.yaml, workspace.yaml) of the checkout; one line if they are missing."""
    root = project_dir()
    dagster_yaml, workspace = root / "deploy" / "dagster.yaml", root / "workspace.yaml"
    for f in (dagster_yaml, workspace):
        if not f.is_file():
            raise DevError(
                f"event-ingest dev: {f} not found; it ships beside the event_ingest "
                f"package (run from a checkout, or pass --no-dagster)"
            )
    return dagster_yaml, workspace


def dagster_command() -> list[str]:
    exe = Path(sys.executable).parent / "dagster"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "dagster"]


class DagsterDev:
    """`dagster dev` on HOST:`port` with DAGSTER_HOME `home`, `env` added to ours.

    `cancel_stale_before`: an epoch time when the Dagster storage is ours (see
    DagsterUI.cancel_stale_runs); once the UI answers, runs created before it that are still
    "running" are marked canceled. None: the storage is not ours, leave its runs alone."""

    def __init__(
        self,
        home: Path,
        dagster_yaml: Path,
        workspace: Path,
        port: int,
        env: dict[str, str],
        log_path: Path,
        console: Console,
        interrupts: Interrupts,
        cancel_stale_before: float | None,
    ) -> None:
        self._home = home
        self._dagster_yaml = dagster_yaml
        self._workspace = workspace
        self._port = port
        self._env = env
        self._log_path = log_path
        self._console = console
        self._interrupts = interrupts
        self._cancel_stale_before = cancel_stale_before
        self.url = f"http://{HOST}:{port}"
        self.ui = DagsterUI(self.url, console.say)
        self.child: Child | None = None
        self._tee: threading.Thread | None = None
        self.answered = False  # the UI answered with the code loaded
        self.answered_at: float | None = None  # time.monotonic() then
        self.settled = False  # answered, or we gave up waiting for it

    def start(self) -> None:
        self._home.mkdir(exist_ok=True)
        shutil.copyfile(self._dagster_yaml, self._home / "dagster.yaml")  # every start: the project's copy wins
        env = {**self._env, "DAGSTER_HOME": str(self._home), "PYTHONUNBUFFERED": "1"}
        cmd = [*dagster_command(), "dev", "-w", str(self._workspace), "-h", HOST, "-p", str(self._port)]
        self._console.say(
            f"starting Dagster ({' '.join(cmd[-6:])}); it takes 10-30 s, the summary follows when the UI answers"
        )
        # cwd = DAGSTER_HOME: dagster dev reads a dagster.yaml in its cwd, and must read this one.
        child = Child.spawn(
            "dagster dev",
            "dagster",
            cmd,
            self._log_path,
            self.url,
            cwd=str(self._home),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        child.extra = {"home": str(self._home)}
        self.child = child
        self._tee = threading.Thread(target=self._show_output, args=(child.proc,), name="dagster-output", daemon=True)
        self._tee.start()

    def poll(self, elapsed_s: float) -> bool:
        """One readiness check, `elapsed_s` after the stack started; True when it has just settled
        (then `answered` says whether the UI answered, or we gave up after UI_READY_TIMEOUT_S)."""
        if self.settled:
            return False
        if self.ui.poll_ui():
            self.answered = self.settled = True
            self.answered_at = time.monotonic()
            if self._cancel_stale_before is not None:
                self.ui.cancel_stale_runs(self._cancel_stale_before)
            return True
        if elapsed_s > UI_READY_TIMEOUT_S:
            self.settled = True  # stop polling; say where to look
            self._console.say(
                f"WARNING: the Dagster UI did not answer within {UI_READY_TIMEOUT_S:.0f}s; see {self._log_path}"
            )
            return True
        return False

    def first_dead(self) -> tuple[str, int | None, Path] | None:
        if self.child is not None and (rc := self.child.exit_code()) is not None:
            return "dagster dev", rc, self.child.log_path
        return None

    def _show_output(self, proc: subprocess.Popen[bytes]) -> None:
        """dagster dev's output (and its webserver's, daemon's, code server's, runs') to our
        stdout and to logs/dagster.log."""
        assert proc.stdout is not None  # started with stdout=PIPE
        show = True
        with open(self._log_path, "ab") as logf:
            for line in iter(proc.stdout.readline, b""):
                logf.write(line)
                logf.flush()
                # If our stdout went away, keep the log going (and dagster's pipe drained).
                show = show and self._console.write(line.decode(errors="replace"))

    def stop(self) -> bool:
        """In the steps of the module's docstring; True if nothing had to be killed or waited out."""
        if self.child is None:
            return True
        say, wait_for = self._console.say, self._interrupts.wait_for
        proc = self.child.proc
        pgid = proc.pid
        tree = process_tree([proc.pid], pgid=pgid)
        clean = True
        if proc.poll() is None:
            say("stopping Dagster...")
            signal_pid(proc.pid, signal.SIGINT)
            if not wait_for(lambda: proc.poll() is not None, DAGSTER_STOP_TIMEOUT_S):
                say(f"dagster dev did not stop within {DAGSTER_STOP_TIMEOUT_S:.0f}s")
                clean = False
        tree.update(process_tree([p for p, t in tree.items() if alive(p, t)], pgid))
        rest = {p: t for p, t in tree.items() if p != proc.pid and alive(p, t)}
        if rest:
            say(f"stopping Dagster's code server and run workers ({len(rest)} processes)...")
            killpg(pgid, signal.SIGINT)
            if not wait_for(lambda: not any(alive(p, t) for p, t in rest.items()), RUN_STOP_TIMEOUT_S):
                clean = False
        killed = sweep(tree, pgid, wait_s=0)
        proc.wait()
        if killed:
            say(f"killed {len(killed)} Dagster process(es) that did not stop: {', '.join(map(str, sorted(killed)))}")
        if self._tee is not None:
            self._tee.join(5)
        return clean
