-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d),
-- as $POSTGRES_USER, who therefore owns both databases.
--   event_ingest  the events, source_state and quarantine tables (created by POSTGRES_DB)
--   dagster       Dagster's run, event-log and schedule storage (dagster.yaml)
-- To add a database to an existing volume (e.g. a second deployment's Dagster storage):
--   docker compose exec postgres createdb -U event_ingest dagster_other
CREATE DATABASE dagster;
