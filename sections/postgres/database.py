"""One database to talk to: which one (a URL, ``$DATABASE_URL``, or the embedded server), its
schema brought up to date, and a pool of connections to it.

Connections are autocommit (callers open ``conn.transaction()`` where they write) and prepare no
statements by default, the migrating one included: the Supabase transaction pooler
(PgBouncer/Supavisor, port 6543) cannot keep prepared statements across transactions. Nothing else
rests on the session either (ARCHITECTURE.md, "Pooler-proof"). pgvector's types are registered on
every connection.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from sections.postgres.embedded import DatabaseHandle, open_database
from sections.postgres.schema import apply_migrations
from sections.redact import mask_url

__all__ = ["Connect", "Database", "raised_in_psycopg", "unreachable"]

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]  # a pooled connection, as a context manager


def _configure(conn: psycopg.Connection[Any]) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def raised_in_psycopg(error: BaseException) -> bool:
    """Whether ``error`` was raised inside psycopg or its pool: a server connection that a pooler
    drops in the middle of a COPY surfaces as a ``ValueError`` from psycopg's COPY code."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    module = str(traceback.tb_frame.f_globals.get("__name__", ""))
    return module.split(".")[0] in ("psycopg", "psycopg_pool", "psycopg_binary", "psycopg_c")


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the database could not be reached or dropped the connection (worth
    waiting out), not that a statement was wrong. A pool that timed out waiting counts too."""
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        # No SQLSTATE: the client lost or never had a connection (a pool that timed out too); 08: a
        # connection exception; 57P01-03: the server shutting down or starting. A full disk (53100)
        # or a statement the server refused is an answer, not an absence: it fails the run at once.
        state = error.sqlstate
        return state is None or state.startswith("08") or state in {"57P01", "57P02", "57P03"}
    return not isinstance(error, psycopg.Error) and isinstance(error, Exception) and raised_in_psycopg(error)


class Database:
    """The database handle, migrated, with a connection pool; ``close()`` releases all of it."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        min_size: int = 1,
        max_size: int = 4,
        migrate: bool = True,
        prepare_threshold: int | None = None,
        connect_timeout: float = 30.0,
    ):
        self._handle: DatabaseHandle | None = open_database(database_url, data_dir)
        self.url_masked = mask_url(self._handle.url)
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._sizes, self._prepare_threshold = (min_size, max_size), prepare_threshold
        try:
            if migrate:
                self._migrate(self._handle.url, connect_timeout, prepare_threshold)
            self._pool = self._new_pool(self._handle.url)
            self._pool.open(wait=True, timeout=connect_timeout)
        except BaseException:
            self.close()
            raise

    def _new_pool(self, url: str) -> ConnectionPool[psycopg.Connection[Any]]:
        return ConnectionPool(url, min_size=self._sizes[0], max_size=self._sizes[1],
                              kwargs={"autocommit": True, "prepare_threshold": self._prepare_threshold},
                              configure=_configure, check=ConnectionPool.check_connection, name="sections", open=False)

    def renew(self, timeout: float = 2.0) -> bool:
        """After an outage: one direct try to reach the database; when it answers, a fresh pool
        takes over (the old one's reconnection backoff grows to tens of seconds, which a run
        waiting to write must not sit out). False while the database is still away."""
        handle = self._handle
        if handle is None or self._pool is None:
            return False
        try:
            psycopg.connect(handle.url, autocommit=True, connect_timeout=max(2, int(timeout))).close()
        except psycopg.Error:
            return False
        fresh = self._new_pool(handle.url)
        fresh.open(wait=False)
        old, self._pool = self._pool, fresh
        if old is not None:
            old.close(timeout=0)  # connections in use are closed as they come back
        return True

    def _migrate(self, url: str, connect_timeout: float, prepare_threshold: int | None) -> None:
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=int(connect_timeout),
                                   prepare_threshold=prepare_threshold)
        except psycopg.OperationalError as error:
            raise psycopg.OperationalError(f"cannot connect to {self.url_masked}: {error}") from None
        with conn:
            apply_migrations(conn)

    @property
    def url(self) -> str:
        """The connection URL, password included: for the processes of one run that must reach the
        same database (a Ray actor drawing on the shared rate budget). Never print it (``url_masked``)."""
        if self._handle is None:
            raise RuntimeError("the database is closed")
        return self._handle.url

    def connect(self, url: str | None = None, connect_timeout: float = 15.0) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool (autocommit), to ``url`` or this database: for
        what needs a session kept across transactions, such as LISTEN."""
        if self._handle is None:
            raise RuntimeError("the database is closed")
        return psycopg.connect(url or self._handle.url, autocommit=True, connect_timeout=int(connect_timeout))

    def connection(self, timeout: float | None = None) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A pooled connection (autocommit; use ``conn.transaction()``), as a context manager;
        ``timeout``: the most seconds to wait for one (the pool's 30 s when None)."""
        if self._pool is None:
            raise RuntimeError("the database is closed")
        return self._pool.connection(timeout=timeout)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()
