"""The schema in one place: tables, the counting triggers, upgrades between versions, per-source partitions.

Applied idempotently (``apply_schema``), from any number of processes at once: an advisory lock
serialises changes, and a database records its version so an older one is brought up step by step.

Counters kept by Postgres itself (statement triggers on ``events`` and on every
partition, so an operator's DELETE or TRUNCATE keeps them true as well as the
store's commits): ``id_blocks`` holds how many events each block of 65,536
consecutive ids stores, ``events_per_minute`` how many were ingested each
minute. Checks and the rollup read those, never every row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from psycopg import sql

from ...config import is_valid_source_name
from .connections import Connections, Cursor, one_row

# Serialises schema changes across processes (any constant works; this is "event-ingest").
SCHEMA_LOCK_KEY = 0x6576656E74696E

# Bump with a new step in _upgrade (below) when the schema changes; databases record theirs.
SCHEMA_VERSION = 5

# id_blocks groups ids by event_id >> ID_BLOCK_BITS: a block is small enough to scan for the exact
# missing ranges in milliseconds, and large enough that a source's block rows stay few (458 at 30M ids).
ID_BLOCK_BITS = 16
ID_BLOCK_SIZE = 1 << ID_BLOCK_BITS

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS events (
    source       text        NOT NULL,
    event_id     bigint      NOT NULL,
    payload      jsonb,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
) PARTITION BY LIST (source);

CREATE TABLE IF NOT EXISTS source_state (
    source          text        PRIMARY KEY,
    cursor          bigint      NOT NULL DEFAULT 0,
    epoch           bigint      NOT NULL DEFAULT 0,
    events_stored   bigint      NOT NULL DEFAULT 0,
    last_ingest_at  timestamptz,
    fenced_commits  bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS quarantine (
    id           bigserial   PRIMARY KEY,
    source       text        NOT NULL,
    event_id     bigint,
    raw          bytea       NOT NULL,
    reason       text        NOT NULL,
    digest       text        NOT NULL,
    seen_count   integer     NOT NULL DEFAULT 1,
    received_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, digest)
);

-- Events stored per source per minute of ingested_at, kept by the counting triggers (version 2).
CREATE TABLE IF NOT EXISTS events_per_minute (
    source   text        NOT NULL,
    minute   timestamptz NOT NULL,
    events   bigint      NOT NULL,
    PRIMARY KEY (source, minute)
);

CREATE TABLE IF NOT EXISTS schema_version (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version   integer NOT NULL
);
"""

# Databases made before schema_version existed hold version 1 (the tables above, no counters).
READ_SCHEMA_VERSION_SQL = "SELECT coalesce((SELECT version FROM schema_version), 1)"
WRITE_SCHEMA_VERSION_SQL = """
INSERT INTO schema_version (version) VALUES (%(version)s)
ON CONFLICT (only_row) DO UPDATE SET version = excluded.version
"""

# Version 2: counters that make checks and rollup cost the same at any table size.
# The triggers take the whole statement's rows at once (transition tables), so a page of 1000
# costs one upsert per block and per minute it touches, not one per row.
_ADD_COUNTS = f"""
    WITH counted AS MATERIALIZED (
        SELECT source, event_id >> {ID_BLOCK_BITS} AS block, date_trunc('minute', ingested_at) AS minute,
               count(*) AS events
        FROM new_rows GROUP BY 1, 2, 3
    ), blocks AS (
        INSERT INTO id_blocks AS b (source, block, events)
        SELECT source, block, sum(events) FROM counted GROUP BY 1, 2
        ON CONFLICT (source, block) DO UPDATE SET events = b.events + excluded.events
    ), minutes AS (
        INSERT INTO events_per_minute AS m (source, minute, events)
        SELECT source, minute, sum(events) FROM counted GROUP BY 1, 2
        ON CONFLICT (source, minute) DO UPDATE SET events = m.events + excluded.events
    )
    -- events_stored counts insertions (an UPDATE moves rows, it stores none).
    UPDATE source_state s SET events_stored = s.events_stored + n.events
    FROM (SELECT source, sum(events) AS events FROM counted GROUP BY source) n
    WHERE s.source = n.source AND TG_OP = 'INSERT';
"""
_REMOVE_COUNTS = f"""
    UPDATE id_blocks b SET events = b.events - d.events
    FROM (SELECT source, event_id >> {ID_BLOCK_BITS} AS block, count(*) AS events FROM old_rows GROUP BY 1, 2) d
    WHERE b.source = d.source AND b.block = d.block;
    DELETE FROM id_blocks WHERE events = 0 AND (source, block) IN
        (SELECT DISTINCT source, event_id >> {ID_BLOCK_BITS} FROM old_rows);
    UPDATE events_per_minute m SET events = m.events - d.events
    FROM (SELECT source, date_trunc('minute', ingested_at) AS minute, count(*) AS events FROM old_rows
          GROUP BY 1, 2) d
    WHERE m.source = d.source AND m.minute = d.minute;
    DELETE FROM events_per_minute WHERE events = 0 AND (source, minute) IN
        (SELECT DISTINCT source, date_trunc('minute', ingested_at) FROM old_rows);
"""
COUNTERS_SQL = f"""
CREATE TABLE IF NOT EXISTS id_blocks (
    source  text    NOT NULL,
    block   bigint  NOT NULL,  -- event_id >> {ID_BLOCK_BITS}
    events  bigint  NOT NULL,
    PRIMARY KEY (source, block)
);

-- The gap and cursor checks look quarantined ids up by source and id.
CREATE INDEX IF NOT EXISTS quarantine_source_event_id ON quarantine (source, event_id)
    WHERE event_id IS NOT NULL;

-- One statement per page: the rows are grouped once, then every counter is upserted from the groups.
CREATE OR REPLACE FUNCTION events_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_ADD_COUNTS}
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION events_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_REMOVE_COUNTS}
    RETURN NULL;
END $$;

-- An UPDATE may move an event to another id, minute or source: take the old rows out, put the new in.
CREATE OR REPLACE FUNCTION events_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{_REMOVE_COUNTS}
{_ADD_COUNTS}
    RETURN NULL;
END $$;

-- TRUNCATE has no transition table. On a partition the trigger names its source; TRUNCATE of the
-- parent fires the partitions' triggers too, so the parent's (no argument) is the catch-all.
CREATE OR REPLACE FUNCTION events_count_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM id_blocks WHERE TG_NARGS = 0 OR source = TG_ARGV[0];
    DELETE FROM events_per_minute WHERE TG_NARGS = 0 OR source = TG_ARGV[0];
    RETURN NULL;
END $$;
"""

# Statement triggers fire only for the table a statement names: the parent for the store's writes,
# a partition for an operator's `DELETE FROM events_<source>`. So both carry them.
COUNTING_TRIGGERS = {
    "events_count_insert": "AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION events_count_insert()",
    "events_count_delete": "AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION events_count_delete()",
    "events_count_update": "AFTER UPDATE ON {table} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION events_count_update()",
    "events_count_truncate": "AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION "
    "events_count_truncate({source})",
}

# Version 3: when a source was last polled (freshness). A step, not a line of SCHEMA_SQL: an ALTER TABLE
# takes its lock even when the column exists, and would queue behind (and hold up) every commit.
ADD_LAST_POLL_AT_SQL = "ALTER TABLE source_state ADD COLUMN IF NOT EXISTS last_poll_at timestamptz"

# Version 4: what operators read and do. Request and error counters per source (flushed by the drain with
# the writes it makes anyway), where each quarantined item was served (the lastId: a source that cannot get
# past its cursor is found by an index probe), and what an operator did with an item (requeued, discarded).
# `recent_*` decay with a time constant of an hour, so their ratio is the recent error rate.
ADD_OPERATIONS_COLUMNS_SQL = (
    """ALTER TABLE source_state
        ADD COLUMN IF NOT EXISTS requests        bigint      NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS errors          bigint      NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS recent_requests float8      NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS recent_errors   float8      NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS recent_at       timestamptz NOT NULL DEFAULT now(),
        ADD COLUMN IF NOT EXISTS last_error      text,
        ADD COLUMN IF NOT EXISTS last_error_at   timestamptz""",
    """ALTER TABLE quarantine
        ADD COLUMN IF NOT EXISTS at_cursor   bigint,
        ADD COLUMN IF NOT EXISTS resolution  text CHECK (resolution IN ('requeued', 'discarded')),
        ADD COLUMN IF NOT EXISTS resolved_at timestamptz,
        ADD COLUMN IF NOT EXISTS resolution_note text""",
    "CREATE INDEX IF NOT EXISTS quarantine_open_at_cursor ON quarantine (source, at_cursor) WHERE resolution IS NULL",
)

# Version 5: the counter audit (audit.py): where its round over each source's id blocks stands, and the
# blocks it found disagreeing with the rows, kept until a recount (the checks fail naming them meanwhile).
ADD_COUNTER_AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS counter_audit (
    source            text        PRIMARY KEY,
    next_block        bigint,     -- where the next call resumes (NULL: from the lowest block)
    verified_at       timestamptz,  -- the last call
    pass_completed_at timestamptz,  -- the last call that went past the highest block
    drift             jsonb       NOT NULL DEFAULT '[]',  -- [{block, counted, rows}] found wrong, not recounted
    drift_found_at    timestamptz
)"""

# Writers wait here while counters are rebuilt from the rows, so no row is counted twice or missed.
LOCK_EVENTS_SQL = "LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"

# The partition of a source, and how many of the counting triggers it carries.
PARTITION_STATE_SQL = """
SELECT to_regclass(quote_ident(%(partition)s)) IS NOT NULL,
       (SELECT count(*) FROM pg_trigger
        WHERE tgrelid = to_regclass(quote_ident(%(partition)s)) AND tgname = ANY(%(triggers)s))
"""

# Counters rebuilt from the rows of one source (schema upgrade; a partition found without its triggers;
# the operator's recount, audit.py).
RECOUNT_SQL = (
    "DELETE FROM id_blocks WHERE source = %(source)s",
    f"""INSERT INTO id_blocks (source, block, events)
        SELECT source, event_id >> {ID_BLOCK_BITS}, count(*) FROM events WHERE source = %(source)s GROUP BY 1, 2""",
    "DELETE FROM events_per_minute WHERE source = %(source)s",
    """INSERT INTO events_per_minute (source, minute, events)
       SELECT source, date_trunc('minute', ingested_at), count(*) FROM events WHERE source = %(source)s
       GROUP BY 1, 2""",
)

SOURCES_SQL = "SELECT source FROM source_state ORDER BY source"

ENSURE_STATE_SQL = "INSERT INTO source_state (source) VALUES (%(source)s) ON CONFLICT (source) DO NOTHING"

# Schema as found, for readers that must not change it (status): are the tables there, is the version.
TABLES_FOUND_SQL = "SELECT to_regclass('source_state') IS NOT NULL, to_regclass('schema_version') IS NOT NULL"

# A source and everything kept for it (benchmarks clean up with it). Dropping the partition fires
# no trigger, so its counters go explicitly.
FORGET_SOURCE_SQL = (
    "DELETE FROM id_blocks WHERE source = %(source)s",
    "DELETE FROM counter_audit WHERE source = %(source)s",
    "DELETE FROM events_per_minute WHERE source = %(source)s",
    "DELETE FROM quarantine WHERE source = %(source)s",
    "DELETE FROM source_state WHERE source = %(source)s",
)


def partition_name(source: str) -> str:
    """Name of the events partition of a source, within Postgres' 63-byte identifiers."""
    if not is_valid_source_name(source):
        raise ValueError(f"invalid source name {source!r}")
    name = f"events_{source}"
    if len(name) > 63:
        # Truncation could make two long names collide: keep a digest of the whole name.
        name = f"events_{source[:40]}_{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    return name


class Schema:
    """Statements that make, upgrade and read the schema, on the pool it is given."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections

    def apply_schema(self, sources: Iterable[str] = ()) -> None:
        """Create tables and per-source partitions if missing, and bring an older database up to
        SCHEMA_VERSION; safe to run from many processes at once."""
        sources = list(sources)

        def apply(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            cur.execute(SCHEMA_SQL)
            cur.execute(READ_SCHEMA_VERSION_SQL)
            version = cur.fetchone()[0]
            if version < SCHEMA_VERSION:
                _upgrade(cur, version)
            for source in sources:
                _ensure_source(cur, source)

        self.connections.run("schema setup", apply)

    def ensure_source(self, source: str) -> None:
        def ensure(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            _ensure_source(cur, source)

        self.connections.run(f"setup of source {source!r}", ensure)

    def forget_source(self, source: str) -> None:
        """Drop a source's partition, counters, quarantine and state (benchmarks clean up with it)."""

        def forget(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(partition_name(source))))
            for statement in FORGET_SOURCE_SQL:
                cur.execute(statement, {"source": source})

        self.connections.run(f"removal of source {source!r}", forget)

    def schema_found(self) -> tuple[bool, int | None]:
        """(are the tables there, the schema version they are at), changing nothing."""

        def read(cur):
            tables, versioned = cur.execute(TABLES_FOUND_SQL).fetchone()
            if not tables:
                return False, None
            return True, cur.execute(READ_SCHEMA_VERSION_SQL).fetchone()[0] if versioned else 1

        return self.connections.run("schema query", read)


def _upgrade(cur: Cursor, version: int) -> None:
    """Bring a database at `version` to SCHEMA_VERSION, in the schema transaction (all or nothing)."""
    if version < 2:
        # Writers wait until the counters are built from the rows they already committed.
        cur.execute(LOCK_EVENTS_SQL)
        cur.execute(COUNTERS_SQL)
        _create_counting_triggers(cur, "events", None)
        cur.execute(SOURCES_SQL)
        for (source,) in cur.fetchall():
            _count_partition(cur, source)
    if version < 3:
        cur.execute(ADD_LAST_POLL_AT_SQL)
    if version < 4:
        for statement in ADD_OPERATIONS_COLUMNS_SQL:
            cur.execute(statement)
    if version < 5:
        cur.execute(ADD_COUNTER_AUDIT_SQL)
    cur.execute(WRITE_SCHEMA_VERSION_SQL, {"version": SCHEMA_VERSION})


def _create_counting_triggers(cur: Cursor, table: str, source: str | None) -> None:
    for name, definition in COUNTING_TRIGGERS.items():
        cur.execute(
            sql.SQL("CREATE OR REPLACE TRIGGER {} " + definition).format(
                sql.Identifier(name),
                table=sql.Identifier(table),
                source=sql.Literal(source) if source is not None else sql.SQL(""),
            )
        )


def _count_partition(cur: Cursor, source: str) -> bool:
    """Give an existing partition its counting triggers and counters, if it lacks them (made before
    version 2, or by an older consumer since). False if the source has no partition."""
    partition = partition_name(source)
    cur.execute(PARTITION_STATE_SQL, {"partition": partition, "triggers": list(COUNTING_TRIGGERS)})
    exists, triggers = one_row(cur)
    if exists and triggers < len(COUNTING_TRIGGERS):
        # Creating a trigger locks the partition against writers: no row lands uncounted meanwhile.
        _create_counting_triggers(cur, partition, source)
        for statement in RECOUNT_SQL:
            cur.execute(statement, {"source": source})
    return bool(exists)


def _ensure_source(cur: Cursor, source: str) -> None:
    if not _count_partition(cur, source):
        cur.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF events FOR VALUES IN ({})").format(
                sql.Identifier(partition_name(source)), sql.Literal(source)
            )
        )
        _create_counting_triggers(cur, partition_name(source), source)
    cur.execute(ENSURE_STATE_SQL, {"source": source})
