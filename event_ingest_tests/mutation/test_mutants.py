"""The short form of the mutation matrix: broken cores must fail, on the check named for the guard.

Three mutants go through short chaos runs of the two trials that catch them (a stale commit with
the taker held; Redis flushed while a source holds a response), and the three gate mutants of a
partial loss of Redis through a short run of the one loss each is named for (a replica behind
promoted; a restart from an older snapshot; the gate record evicted); the real core must pass both
sets of runs. The other mutants go through the unit tests that name their guard. Two runs at a
time (they mostly wait on faults). The full matrix: ``python -m event_ingest_tests.mutation.matrix``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from event_ingest.chaos.explain import format_violation

from .mutants import MUTANTS
from .runs import chaos_run, unit_run

pytestmark = [pytest.mark.slow, pytest.mark.mutation]

SHORT_FAULTS = ["stop_past_lease", "redis_flush_in_flight"]
LOSS_FAULTS = ["redis_failover_behind", "redis_restore_old_snapshot", "redis_evict_gate_records"]
# Each mutant, and the faults of its short run.
CHAOS_MUTANTS = {
    "fence_epoch_clause_removed": SHORT_FAULTS,
    "lease_released_without_owner_check": SHORT_FAULTS,
    "gate_no_wait_after_state_lost": SHORT_FAULTS,
    "gate_old_era_records_trusted": ["redis_failover_behind"],
    "gate_server_change_unnoticed": ["redis_restore_old_snapshot"],
    "gate_evictions_unnoticed": ["redis_evict_gate_records"],
}
REAL_CORE_RUNS = {"short": SHORT_FAULTS, "partial_loss": LOSS_FAULTS}
UNIT_MUTANTS = [n for n in MUTANTS if n not in CHAOS_MUTANTS]


@pytest.fixture(scope="module")
def results():
    def chaos(name, faults):
        return chaos_run(name, seed=11, seconds=6, faults=faults, timeout=150)

    with ThreadPoolExecutor(max_workers=2) as pool:
        real = {run: pool.submit(chaos, None, faults) for run, faults in REAL_CORE_RUNS.items()}
        runs = {name: pool.submit(chaos, name, faults) for name, faults in CHAOS_MUTANTS.items()}
        units = {name: pool.submit(unit_run, name, MUTANTS[name].tests) for name in UNIT_MUTANTS}
        return {
            "real": {k: f.result() for k, f in real.items()},
            "chaos": {k: f.result() for k, f in runs.items()},
            "unit": {k: f.result() for k, f in units.items()},
        }


@pytest.mark.timeout(400)
@pytest.mark.parametrize("run_name", REAL_CORE_RUNS)
def test_the_real_core_passes_the_short_chaos_run(results, run_name):
    run = results["real"][run_name]
    explained = "\n".join(format_violation(v) for v in (run["report"] or {}).get("violations", []))
    assert run["ok"], f"failed: {run['failed']} (state kept in {run['kept']})\n{explained}\n{run['log']}"


@pytest.mark.timeout(400)
@pytest.mark.parametrize("name", CHAOS_MUTANTS)
def test_a_broken_guard_fails_chaos_on_its_own_check(results, name):
    run = results["chaos"][name]
    assert not run["ok"] and MUTANTS[name].check in run["failed"], f"failed: {run['failed']}\n{run['log']}"


@pytest.mark.timeout(400)
@pytest.mark.parametrize("name", UNIT_MUTANTS)
def test_a_broken_guard_fails_its_unit_tests(results, name):
    unit = results["unit"][name]
    assert unit["failed"], f"{MUTANTS[name].tests}: {unit['summary']}\n{unit['output']}"
