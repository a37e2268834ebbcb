"""StateDir alone: its lock (one stack per dir), the stack file, the leftovers of a hard-killed run."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from event_ingest.devstack.errors import DevError
from event_ingest.devstack.procs import alive, spawn, start_time
from event_ingest.devstack.statedir import StateDir


def test_open_makes_the_dir_and_its_logs_and_takes_the_lock(tmp_path):
    with StateDir(tmp_path / "state") as state:
        assert state.locked and state.logs.is_dir()
        assert (state.path / "dev.lock").read_text() == f"{os.getpid()}\n"
    assert not state.locked


def test_a_second_stack_on_the_same_dir_is_refused_naming_the_holder(tmp_path):
    with StateDir(tmp_path) as first:
        first.write_stack({"pid": os.getpid()})
        second = StateDir(tmp_path)
        with pytest.raises(DevError, match=rf"another dev stack \(pid {os.getpid()}\) is running on") as err:
            second.open()
        assert "\n" not in str(err.value) and err.value.code == 2
        assert not second.locked
        second.close()  # not ours: the running stack's file stays
        assert first.stack_file.exists()
    assert not first.stack_file.exists()  # ours: removed on a clean stop
    with StateDir(tmp_path):  # and the lock is free again
        pass


def test_the_stack_file_is_whole_and_owner_only(tmp_path):
    with StateDir(tmp_path) as state:
        state.write_stack({"ready": False})
        state.write_stack({"ready": True, "url": "postgresql://u:secret@h/db"})
        assert json.loads(state.stack_file.read_text())["ready"] is True
        assert stat.S_IMODE(state.stack_file.stat().st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_leftovers_named_in_the_stack_file_are_stopped(tmp_path):
    sleeper = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    other = spawn([sys.executable, "-c", "import time; time.sleep(60)"])  # named with another start time
    try:
        children = [{"name": "mock", "pid": sleeper.pid, "start_time": start_time(sleeper.pid)}]
        dagster = {"name": "dagster", "pid": other.pid, "start_time": -1}
        (tmp_path / "stack.json").write_text(json.dumps({"sources": {"children": children}, "dagster": dagster}))
        said: list[str] = []
        with StateDir(tmp_path) as state:
            state.stop_leftovers(said.append)
            assert not state.stack_file.exists()
        sleeper.wait(10)
        assert said == [f"stopping mock (pid {sleeper.pid}) left running by an earlier run"]
        assert alive(other.pid)  # its start time did not match: a pid reused by someone else
    finally:
        for proc in (sleeper, other):
            proc.kill()
            proc.wait()


def test_leftovers_need_the_lock(tmp_path):
    with pytest.raises(RuntimeError):
        StateDir(tmp_path).stop_leftovers(print)


def test_an_unreadable_stack_file_is_no_leftover(tmp_path):
    (tmp_path / "stack.json").write_text("{half")
    with StateDir(tmp_path) as state:
        state.stop_leftovers(pytest.fail)
