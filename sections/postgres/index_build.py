"""Building a model's HNSW indexes so that the build finishes, and saying how it went.

A build can take minutes (20k x 3,072 dimensions: ~2 on a small server), which is where it used
to fail. Each index is one ``CREATE INDEX`` in its own transaction (a plain build, not
``CONCURRENTLY``: ``set local`` then works through a transaction pooler, and a build that fails
leaves nothing behind; writes wait while it runs, searches do not), and that transaction:

- lifts ``statement_timeout`` for itself only (``sections.postgres.index.lock_for_build``);
- asks for ``maintenance_work_mem`` enough to hold the graph (``build_memory``), never less than
  the server's own setting, never more than ``BuildOptions.max_memory``, a quarter of this host's
  memory when the server runs here, or the server's maximum for the setting;
- on a server on this host, lets the build use more of its cores (``max_parallel_maintenance_workers``);
- when the server cannot give that memory (SQLSTATE class 53: a parallel build puts its graph in
  shared memory, and a container's 64 MB ``/dev/shm`` refuses it), builds again once, serially,
  with the server's own ``maintenance_work_mem``, and says so;
- passes on pgvector's notice that the graph outgrew ``maintenance_work_mem`` (the build goes on
  on disk, many times slower).

Progress: while ``CREATE INDEX`` runs, another connection reads ``pg_stat_progress_create_index``
(and, before the build starts, what it waits on) twice a second and hands ``IndexProgress`` to the
caller's callback; with no callback nothing is polled.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from sections.postgres.index import (IndexPlan, StoredDimension, drop_index, has_halfvec, index_cast, index_name,
                                 index_states, lock_for_build, plan_indexes)

__all__ = ["BuildOptions", "BuiltIndex", "IndexProgress", "IndexReport", "build_memory", "ensure", "parse_kb"]

_log = logging.getLogger(__name__)

ConnectionFactory = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]
POLL_INTERVAL = 0.5  # seconds between two reads of the build's progress
LOCAL_MEMORY_SHARE = 4  # a server on this host gets at most 1/4 of its memory for one build
OUTGREW_MEMORY = "hnsw graph no longer fits into maintenance_work_mem"  # pgvector's notice


@dataclass(frozen=True, slots=True)
class BuildOptions:
    m: int = 16
    ef_construction: int = 64
    maintenance_work_mem: str | None = None  # given: used as is (within the server's range), no estimate
    max_memory: str = "2GB"  # the most an estimate asks for
    workers: int | None = None  # max_parallel_maintenance_workers; None: the server's (more when it runs here)


class IndexProgress(NamedTuple):
    """Where one build stands: Postgres's phase (or what the build waits on), vectors done of total."""

    name: str  # the index's
    dimensions: int
    phase: str
    done: int
    total: int


ProgressCallback = Callable[[IndexProgress], None]


class BuiltIndex(NamedTuple):
    name: str
    dimensions: int
    rows: int
    seconds: float
    memory: str  # the maintenance_work_mem it ran with
    workers: int  # max_parallel_maintenance_workers it ran with


@dataclass(slots=True)
class IndexReport:
    """What ``ensure`` did for one model."""

    model: str
    indexes: list[str] = field(default_factory=list)  # the model's valid indexes afterwards
    built: list[BuiltIndex] = field(default_factory=list)
    dropped_invalid: list[str] = field(default_factory=list)  # left invalid by a build that did not finish
    dropped_stale: list[str] = field(default_factory=list)  # of dimensions no longer stored
    unindexable: list[int] = field(default_factory=list)  # dimensions this pgvector cannot index
    notes: list[str] = field(default_factory=list)  # what the user should know: slow builds, fallbacks


class _Server(NamedTuple):
    """The server's side of the memory decision (kB, as ``pg_settings`` gives it)."""

    memory_kb: int  # maintenance_work_mem as the role gets it
    max_memory_kb: int  # the most the setting accepts
    workers: int  # max_parallel_maintenance_workers
    max_workers: int  # max_parallel_workers: the pool parallel builds draw from
    local: bool  # reached by a unix socket or loopback: it shares this host's memory and cores


_SERVER = """
select (select setting::bigint from pg_settings where name = 'maintenance_work_mem'),
       (select max_val::bigint from pg_settings where name = 'maintenance_work_mem'),
       current_setting('max_parallel_maintenance_workers')::int,
       current_setting('max_parallel_workers')::int,
       coalesce(inet_server_addr() <<= '127.0.0.0/8'::inet or inet_server_addr() = '::1'::inet, true)
"""


def ensure(connect: ConnectionFactory, model_name: str, *, dimensions: int | None = None, min_rows: int | None = None,
           options: BuildOptions = BuildOptions(), on_progress: ProgressCallback | None = None) -> IndexReport:
    """Bring the model's indexes up to date: drop the invalid and stale ones, build each missing one
    (only ``dimensions`` when given; with ``min_rows``, only where the model holds that many vectors)."""
    report = IndexReport(model_name)
    with connect() as conn:
        plan: IndexPlan = plan_indexes(conn, model_name, dimensions=dimensions, min_rows=min_rows)
        report.unindexable = plan.unindexable  # said by the caller: after every ingest it would be noise
        for states, dropped in ((plan.invalid, report.dropped_invalid), (plan.stale, report.dropped_stale)):
            dropped.extend(state.name for state in states if drop_index(conn, model_name, state.dimensions))
        if plan.build:
            server = _server(conn)
            halfvec = has_halfvec(conn)
            for stored in plan.build:
                report.built.append(_build(conn, connect, model_name, stored, halfvec, server, options,
                                           on_progress, report.notes))
        report.indexes = [state.name for _, state in sorted(index_states(conn, model_name).items()) if state.valid]
    return report


def build_memory(rows: int, dims: int, halfvec: bool, m: int, cap_mb: int) -> int:
    """maintenance_work_mem (MB) for the whole graph to fit: per vector its elements (2 or 4 bytes
    each), ~2.25 m neighbour slots of 16 bytes (layer 0 holds 2 m), and bookkeeping; capped."""
    per_vector = dims * (2 if halfvec else 4) + 36 * m + 160
    needed_mb = int(rows * per_vector * 1.2 / (1 << 20)) + 32
    return max(1, min(needed_mb, cap_mb))


def _server(conn: psycopg.Connection[Any]) -> _Server:
    row = conn.execute(_SERVER).fetchone()
    assert row is not None
    return _Server(int(row[0]), int(row[1]), int(row[2]), int(row[3]), bool(row[4]))


def _host_memory_mb() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or the value is unknown
        return None


def _settings(rows: int, dims: int, halfvec: bool, server: _Server, options: BuildOptions) -> tuple[int, int]:
    """(maintenance_work_mem in kB, workers) for one build."""
    if options.maintenance_work_mem is not None:
        memory_kb = parse_kb(options.maintenance_work_mem)
    else:
        cap_mb = parse_kb(options.max_memory) // 1024
        host = _host_memory_mb() if server.local else None
        if host is not None:
            cap_mb = min(cap_mb, host // LOCAL_MEMORY_SHARE)
        memory_kb = max(server.memory_kb, build_memory(rows, dims, halfvec, options.m, cap_mb) * 1024)
    if options.workers is not None:
        workers = options.workers
    elif server.local:
        workers = max(server.workers, min((os.cpu_count() or 1) - 1, server.max_workers))
    else:
        workers = server.workers
    return max(64, min(memory_kb, server.max_memory_kb)), max(0, workers)


def _build(conn: psycopg.Connection[Any], connect: ConnectionFactory, model_name: str, stored: StoredDimension,
           halfvec: bool, server: _Server, options: BuildOptions, on_progress: ProgressCallback | None,
           notes: list[str]) -> BuiltIndex:
    dims, rows = stored
    cast = index_cast(dims, halfvec)
    assert cast is not None  # the plan holds indexable dimensions only
    name = index_name(model_name, dims)
    statement = sql.SQL(
        "create index if not exists {name} on section_embeddings using hnsw "
        "((embedding::{cast}({dims})) {ops}) with (m = {m}, ef_construction = {efc}) "
        "where model_name = {model} and dimensions = {dims}"
    ).format(name=sql.Identifier(name), cast=sql.SQL(cast), dims=sql.SQL(str(int(dims))),
             ops=sql.SQL(f"{cast}_cosine_ops"), m=sql.SQL(str(int(options.m))),
             efc=sql.SQL(str(int(options.ef_construction))), model=sql.Literal(model_name))
    memory_kb, workers = _settings(rows, dims, cast == "halfvec", server, options)
    started = time.monotonic()
    try:
        _run(conn, connect, statement, IndexProgress(name, dims, "starting", 0, rows), memory_kb, workers,
             on_progress, notes)
    except psycopg.Error as error:
        if error.sqlstate is None or not error.sqlstate.startswith("53") or (
                workers == 0 and memory_kb <= server.memory_kb):
            raise
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        notes.append(f"{name}: the server could not give {_mb(memory_kb)} to a parallel build ({first_line}); "
                     f"built serially with its own maintenance_work_mem ({_mb(server.memory_kb)}) instead")
        memory_kb, workers = server.memory_kb, 0
        _run(conn, connect, statement, IndexProgress(name, dims, "starting again, serially", 0, rows), memory_kb,
             workers, on_progress, notes)
    seconds = time.monotonic() - started
    _log.info("index %s for %r (%d rows, %d dims) ready in %.1f s", name, model_name, rows, dims, seconds)
    return BuiltIndex(name, dims, rows, seconds, _mb(memory_kb), workers)


def _run(conn: psycopg.Connection[Any], connect: ConnectionFactory, statement: sql.Composed, start: IndexProgress,
         memory_kb: int, workers: int, on_progress: ProgressCallback | None, notes: list[str]) -> None:
    """One attempt: the build's transaction, with pgvector's notices heard and the progress watched."""
    def heard(notice: psycopg.errors.Diagnostic) -> None:
        message = notice.message_primary or ""
        if message.startswith(OUTGREW_MEMORY):
            notes.append(f"{start.name}: {message} ({_mb(memory_kb)}): the build went on on disk, many times "
                         "slower; more memory (max_index_memory, or the server's maintenance_work_mem) makes it faster")

    conn.add_notice_handler(heard)
    watcher = _Watcher(connect, start, on_progress) if on_progress is not None else None
    try:
        with conn.transaction():
            pid = conn.execute("select pg_backend_pid()").fetchone()
            if watcher is not None and pid is not None:
                watcher.watch(int(pid[0]))  # from here on, waiting for the lock shows too
            lock_for_build(conn, start.name)
            conn.execute("select set_config('maintenance_work_mem', %s, true), "
                         "set_config('max_parallel_maintenance_workers', %s, true)", (f"{memory_kb}kB", str(workers)))
            conn.execute(statement)
    finally:
        conn.remove_notice_handler(heard)
        if watcher is not None:
            watcher.stop()
    if on_progress is not None:
        on_progress(start._replace(phase="done", done=start.total))


class _Watcher:
    """Reads the build's progress on its own connection, on a thread, until stopped; never fails the build."""

    def __init__(self, connect: ConnectionFactory, start: IndexProgress, on_progress: ProgressCallback):
        self.connect, self.last, self.on_progress = connect, start, on_progress
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        on_progress(start)

    def watch(self, pid: int) -> None:
        self.thread = threading.Thread(target=self._poll, args=(pid,), name="sections-index-progress", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()

    def _poll(self, pid: int) -> None:
        try:
            with self.connect() as conn:
                while not self.stopped.wait(POLL_INTERVAL):
                    row = conn.execute(_PROGRESS, (pid,)).fetchone()
                    if row is not None and (event := self._event(*row)) != self.last:
                        self.last = event
                        self.on_progress(event)
        except Exception:  # progress is a courtesy: the build goes on without it
            _log.debug("reading the progress of %s failed", self.last.name, exc_info=True)

    def _event(self, phase: str | None, tuples: int | None, blocks: int | None, blocks_total: int | None,
               wait_type: str | None, wait: str | None) -> IndexProgress:
        total = self.last.total
        if wait == "advisory":
            return self.last._replace(phase="waiting for another build of this index")
        if wait_type == "Lock":
            return self.last._replace(phase="waiting for writes to finish")
        if phase is None:  # between statements: nothing new to say
            return self.last
        # tuples_done counts the leader's vectors; blocks_done the table scanned (all models): take the further
        share = max((tuples or 0) / total if total else 0.0, (blocks or 0) / blocks_total if blocks_total else 0.0)
        return self.last._replace(phase=phase.removeprefix("building index: "), done=min(total, int(share * total)))


_PROGRESS = """
select p.phase, p.tuples_done, p.blocks_done, p.blocks_total, a.wait_event_type, a.wait_event
  from pg_stat_activity a left join pg_stat_progress_create_index p on p.pid = a.pid
 where a.pid = %s
"""


def parse_kb(value: str) -> int:
    """A memory setting as Postgres writes it (``2GB``, ``512MB``, ``65536kB``, a bare number of kB)
    in kB; ValueError for anything else."""
    text = value.strip().upper()
    for suffix, factor in (("TB", 1 << 30), ("GB", 1 << 20), ("MB", 1 << 10), ("KB", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def _mb(kb: int) -> str:
    return f"{kb // 1024} MB" if kb >= 1024 else f"{kb} kB"
