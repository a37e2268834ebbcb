# On PYTHONPATH (with the project root) for a process that must run a broken core: every Python
# process started with it applies the mutant named by EVENT_INGEST_TEST_MUTANT before anything else.
from event_ingest_tests.mutation.mutants import apply_from_env

apply_from_env()
