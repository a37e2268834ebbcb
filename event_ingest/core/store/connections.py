"""The store's connections: a small pool, one transaction per operation, and the errors it raises.

Every operation borrows one connection, runs one transaction and gives it back, so one Store
can serve many threads (``pool_size`` connections at most; a thread waits when all are busy).
A connection that broke is dropped and replaced by the next operation that needs one.

Behind a pooler in transaction mode (PgBouncer's ``pool_mode = transaction``; the README advises it
past a few hundred connections), each transaction may run on another server connection:

1. The drain commits its fifth page; psycopg, seeing the statement run five times, prepares it
   (``_pg3_0``) on the server connection the pooler lent for that transaction.
2. The next commit runs on another server connection, where ``_pg3_0`` does not exist: the commit
   fails (``prepared statement "_pg3_0" does not exist``), and so does every drain.

With ``EVENT_INGEST_DATABASE_POOLER=transaction`` every connection has ``prepare_threshold=None``:
nothing is prepared, and each statement is sent whole.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, Self, TypeVar

import psycopg

from ...config import database_pooler, redact_url

# psycopg's own default: a statement run this many times on a connection is prepared there.
PREPARE_THRESHOLD = 5

# The first statement of a snapshot (reads.py says which comparisons it keeps true): every read after it sees
# the commits made before it, and no other. READ ONLY: a snapshot never writes (and Postgres skips the
# bookkeeping of serializable writes).
SNAPSHOT_SQL = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

Cursor = psycopg.Cursor[Any]
T = TypeVar("T")


class StoreError(RuntimeError):
    """Postgres could not be reached or refused a statement."""


class Fenced(RuntimeError):
    """Another holder took the source over: this commit was rolled back."""


class StateConflict(RuntimeError):
    """The rows are not in the state an operator's request needs (no state row, an item already stored or
    requeued): nothing was changed."""


class Runner(Protocol):
    """Where a part of the store runs its statements: ``run(what, fn)`` calls ``fn(cursor)`` in a transaction
    and turns a Postgres error into a one-line StoreError naming ``what``."""

    def run(self, what: str, fn: Callable[[Cursor], T]) -> T: ...

    def snapshot(self) -> AbstractContextManager[Runner]:
        """A runner whose every ``run`` is part of one REPEATABLE READ, READ ONLY transaction."""
        ...


class Connections:
    """The pool, the one owner of the store's connections; every statement of the store goes through its
    ``run`` (one transaction) or ``run_statement`` (one statement, no BEGIN and COMMIT).
    ``conn`` is the first connection, for tests and tools that run their own SQL from one thread.
    """

    def __init__(
        self,
        url: str,
        *,
        application_name: str = "event-ingest",
        connect_timeout_s: int = 5,
        pool_size: int = 1,
        read_only: bool = False,
        pooler: str | None = None,
    ) -> None:
        """``pooler``: what sits before Postgres (config.POOLER_MODES); None: as $EVENT_INGEST_DATABASE_POOLER
        says."""
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.url = url
        self.pooler = database_pooler() if pooler is None else pooler
        # Each transaction may run on another server connection: nothing may be prepared on one of them.
        self._prepare_threshold = None if self.pooler == "transaction" else PREPARE_THRESHOLD
        self._application_name = application_name
        self._read_only = read_only  # every transaction BEGIN READ ONLY: Postgres refuses any write
        self._connect_timeout_s = connect_timeout_s
        self._pool_size = pool_size
        self._pool = threading.Condition()
        self._idle: list[psycopg.Connection[Any]] = []
        self._open = 0  # connections open or being opened, idle or lent
        self._closed = False
        self._first = self._connect()  # now, so a bad URL fails here and not at the first commit
        self._idle.append(self._first)
        self._open = 1

    @property
    def conn(self) -> psycopg.Connection[Any]:
        return self._first

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.url,
                application_name=self._application_name,
                connect_timeout=self._connect_timeout_s,
                autocommit=False,
                prepare_threshold=self._prepare_threshold,
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to Postgres at {redact_url(self.url)}: {first_line(exc)}") from None
        conn.read_only = self._read_only
        return conn

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[psycopg.Connection[Any]]:
        conn: psycopg.Connection[Any] | None
        with self._pool:
            while True:
                if self._closed:
                    raise StoreError("the store is closed")
                if self._idle:
                    conn = self._idle.pop()
                    break
                if self._open < self._pool_size:
                    conn = None
                    self._open += 1  # the slot is ours while we connect outside the lock
                    break
                self._pool.wait()
        if conn is None:
            try:
                conn = self._connect()
            except BaseException:
                with self._pool:
                    self._open -= 1
                    self._pool.notify()
                raise
            if self._first.closed:
                self._first = conn
        try:
            yield conn
        finally:
            with self._pool:
                if self._closed or conn.closed or conn.broken:
                    self._open -= 1
                    conn.close()
                else:
                    self._idle.append(conn)
                self._pool.notify()

    def close(self) -> None:
        with self._pool:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._pool.notify_all()
        for conn in idle:
            conn.close()
        self._first.close()  # lent out to a test? it is closed all the same

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, what: str, fn: Callable[[Cursor], T]) -> T:
        """``fn(cursor)`` in one transaction of a connection borrowed from the pool."""
        try:
            with self._borrow() as conn, conn.transaction():
                return fn(conn.cursor())
        except (Fenced, StoreError):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"Postgres {what} failed: {first_line(exc)}") from exc

    def run_statement(self, what: str, fn: Callable[[Cursor], T]) -> T:
        """``fn(cursor)`` runs ONE statement, its own transaction: no BEGIN and COMMIT round trips around it.
        Only for a single statement: two would be two transactions."""
        try:
            with self._borrow() as conn:
                conn.autocommit = True
                try:
                    return fn(conn.cursor())
                finally:
                    if not conn.closed:
                        conn.autocommit = False
        except (Fenced, StoreError):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"Postgres {what} failed: {first_line(exc)}") from exc

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[InSnapshot]:
        """One REPEATABLE READ, READ ONLY transaction, held until the block ends, for reads compared with
        each other."""
        try:
            with self._borrow() as conn, conn.transaction():
                cur = conn.cursor()
                cur.execute(SNAPSHOT_SQL)
                yield InSnapshot(cur)
        except psycopg.Error as exc:
            raise StoreError(f"Postgres snapshot failed: {first_line(exc)}") from exc


class InSnapshot:
    """The runner of one open snapshot (``Connections.snapshot``): every ``run`` reads in its transaction."""

    def __init__(self, cur: Cursor) -> None:
        self._cur = cur

    def run(self, what: str, fn: Callable[[Cursor], T]) -> T:
        try:
            return fn(self._cur)
        except psycopg.Error as exc:
            raise StoreError(f"Postgres {what} failed: {first_line(exc)}") from exc

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[InSnapshot]:
        yield self  # already one


def one_row(cur: Cursor) -> tuple[Any, ...]:
    """The row of a statement that always returns one (an aggregate, a scalar subquery)."""
    row = cur.fetchone()
    if row is None:
        raise StoreError("Postgres returned no row where one is always returned")
    return tuple(row)


def first_line(exc: BaseException) -> str:
    """The first line of a driver's error: errors of the store are one line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
