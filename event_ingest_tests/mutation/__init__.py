"""Broken cores on purpose: each mutant breaks one guard, and the chaos harness and the unit tests
must catch it. The breakage lives here, in test code, and reaches a process through
``site/sitecustomize.py`` (put on ``PYTHONPATH`` with ``EVENT_INGEST_TEST_MUTANT=<name>``); the
product has no switch for it.
"""
