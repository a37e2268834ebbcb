"""What the scale bench's CPU ledger and profile summary report (event_ingest/bench/cpu.py, profile.py, outside.py).

The ledger is checked against the kernel's own account of the same processes (getrusage in the
process that reaped them), never against a time the test expects.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from event_ingest.bench.cpu import CpuLedger, descendants, snapshot
from event_ingest.bench.parts import CODE_SERVER, DAEMON, DAGSTER_DEV, RUN_LOGS, RUNS, WEBSERVER, dagster_part
from event_ingest.bench.profile import top_functions

# A parent that, between two reports of its CPU and its reaped children's (getrusage), lets a child started
# earlier burn CPU, and runs five children that live far less than the ledger's sampling interval.
PARENT = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    BURN = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.2: pass\\n"
    LONG = "import sys\\nsys.stdin.readline()\\n" + BURN + "print('burnt', flush=True)\\nsys.stdin.readline()\\n"
    def report():
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        print(json.dumps({"self": me.ru_utime + me.ru_stime, "children": kids.ru_utime + kids.ru_stime}), flush=True)
    def tell(proc):
        proc.stdin.write(b"go\\n")
        proc.stdin.flush()
    long = subprocess.Popen([sys.executable, "-c", LONG], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    print(json.dumps({"long": long.pid}), flush=True)
    sys.stdin.readline()
    report()
    sys.stdin.readline()  # the window has begun
    tell(long)
    long.stdout.readline()
    print("long burnt", flush=True)
    sys.stdin.readline()  # the ledger has sampled the long child's burning
    tell(long)
    for _ in range(5):
        subprocess.run([sys.executable, "-c", BURN], check=True)
    long.wait()
    report()
    sys.stdin.readline()
    """
)

LINUX = sys.platform.startswith("linux")


@pytest.mark.skipif(not LINUX, reason="/proc")
def test_the_ledger_counts_children_that_came_and_went_between_samples_once():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def say(line: str) -> None:
        parent.stdin.write(line + "\n")
        parent.stdin.flush()

    try:
        long_pid = json.loads(parent.stdout.readline())["long"]

        def classify(table):
            return {pid: ("parent" if pid == parent.pid else "child") for pid in descendants(table, [parent.pid])}

        # No sampling thread to speak of: one sample at the start, one at the end, nothing in between.
        ledger = CpuLedger(classify, reaped_into={"parent": "children reaped"}, every_s=3600)
        say("ready")
        before = json.loads(parent.stdout.readline())
        ledger.start()  # the first sample (no other until stop(): every_s is an hour)
        assert long_pid in descendants(snapshot(), [parent.pid])
        say("go")
        assert parent.stdout.readline() == "long burnt\n"
        ledger.sample()  # the long child is seen with its work done, then it goes
        say("next")
        after = json.loads(parent.stdout.readline())
        ledger.stop()
    finally:
        say("end")
        parent.wait(30)
    cpu = ledger.cpu_s()
    truth = (after["self"] - before["self"]) + (after["children"] - before["children"])
    # Six children burnt >= 0.2 s each inside the window: the long one was seen doing it, the five
    # short ones were never seen at all.
    assert truth >= 1.2
    assert cpu["child"] >= 0.2 - 0.05
    assert cpu["children reaped"] >= 1.0 - 0.05
    # Once, not twice: the long child's CPU as last seen is not counted again when its parent reaps it.
    # The truth also holds the long child's start-up before the window (it is reaped whole), which the
    # ledger leaves out; with ticks (10 ms) rounding each process's figure, that is well within 0.1 s.
    assert sum(cpu.values()) == pytest.approx(truth, abs=0.1)


def test_a_profile_counts_own_time_at_the_innermost_frame_and_total_time_once_per_sample():
    collapsed = "\n".join(
        [
            "main (a.py);loop (a.py);parse (json.py) 6",
            "main (a.py);loop (a.py);loop (a.py);send (http.py) 3",  # recursion: loop counted once
            "main (a.py);loop (a.py) 1",
            "",
            "garbage line",
        ]
    )
    top = top_functions(collapsed)
    assert top["samples"] == 10
    assert top["own"] == [
        {"function": "parse (json.py)", "samples": 6, "percent": 60.0},
        {"function": "send (http.py)", "samples": 3, "percent": 30.0},
        {"function": "loop (a.py)", "samples": 1, "percent": 10.0},
    ]
    assert top["total"] == [
        {"function": "loop (a.py)", "samples": 10, "percent": 100.0},
        {"function": "main (a.py)", "samples": 10, "percent": 100.0},
        {"function": "parse (json.py)", "samples": 6, "percent": 60.0},
        {"function": "send (http.py)", "samples": 3, "percent": 30.0},
    ]


def test_dagster_dev_processes_are_told_apart_by_command_line_and_parent():
    py = "/venv/bin/python"
    dev = dagster_part(f"{py} /venv/bin/dagster dev -w workspace.yaml", None)
    code = dagster_part(f"{py} -m dagster code-server start --socket /tmp/x", dev)
    grpc = dagster_part(f"{py} -m dagster api grpc --lazy-load-user-code --socket /tmp/y", code)
    tracker = dagster_part(f"{py} -B -c from multiprocessing.resource_tracker import main;main(12)", grpc)
    run = dagster_part(f"{py} -B -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=13)", grpc)
    tail = dagster_part("tail -F -c +0 /tmp/storage/run/compute_logs/x.out", run)
    orphans = dagster_part(f"{py} .../dagster/_core/execution/scripts/watch_orphans.py 3547 3847", run)
    web = dagster_part(f"{py} -m dagster_webserver --port 3000", dev)
    daemon = dagster_part(f"{py} -m dagster._daemon run --log-level info", dev)
    assert (dev, code, grpc, tracker, run, tail, orphans, web, daemon) == (
        DAGSTER_DEV,
        CODE_SERVER,
        CODE_SERVER,
        CODE_SERVER,
        RUNS,
        RUN_LOGS,
        RUN_LOGS,
        WEBSERVER,
        DAEMON,
    )
