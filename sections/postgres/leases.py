"""Workers and leases: which running ingest is embedding which section, so concurrent runs pay once.

An ingest streams: it cannot hold row locks while its requests are in flight, the way a sync claim
does inside one transaction. Instead it registers a worker row and takes a lease per section it is
about to embed, in short transactions that any pooler can carry. A second run skips leased
sections; the write that stores a vector or a failure drops its lease in the same transaction. A
section a Batch API job covers with the same fingerprint (``sections.postgres.batch_jobs``) is not
leased either: that job is already paid for.

A lease dies with its worker (``on delete cascade``), and a worker is reaped when its heartbeat is
older than ``WORKER_TTL`` (its machine died) or, on this host, as soon as its process is gone (a
kill -9 followed by a rerun resumes at once instead of waiting for the heartbeat to age).
"""
from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import psycopg

__all__ = ["BEAT_INTERVAL", "WORKER_TTL", "Role", "beat", "end_worker", "host_name", "reap", "register_worker", "release",
           "take"]

BEAT_INTERVAL = 10.0  # seconds between a worker's heartbeats
WORKER_TTL = 60.0  # a worker silent this long is dead, wherever it ran

_TAKE = """
insert into section_leases (section_id, model_name, worker_id)
select s.id, %(model)s, %(worker)s
  from sections s
  join unnest(%(ids)s::text[], %(digests)s::bytea[]) as w(id, digest) on w.id = s.id
 where not exists (select 1 from section_embeddings e
                    where e.section_id = s.id and e.model_name = %(model)s and e.content_hash = w.digest)
   and not exists (select 1 from section_batch_items i
                    where i.section_id = s.id and i.model_name = %(model)s and i.content_hash = w.digest)
   for no key update of s skip locked
on conflict do nothing
returning section_id
"""
# A fresh snapshot, after our inserts waited out any run that was writing these sections: drop the
# leases of sections whose wanted vector got stored meanwhile.
_DONE_MEANWHILE = """
delete from section_leases l
 using unnest(%(ids)s::text[], %(digests)s::bytea[]) as w(id, digest)
 where l.worker_id = %(worker)s and l.model_name = %(model)s and l.section_id = w.id
   and exists (select 1 from section_embeddings e
                where e.section_id = w.id and e.model_name = %(model)s and e.content_hash = w.digest)
returning l.section_id
"""


def host_name() -> str:
    return socket.gethostname()


class Role(NamedTuple):
    """What a worker does, as ``status`` shows it."""

    command: str
    model: str | None = None
    collection: str | None = None


_REGISTER = ("insert into section_workers (id, host, pid, command, model_name, collection, embedded) "
             "values (%s, %s, %s, %s, %s, %s, %s) on conflict (id) do nothing")


def register_worker(conn: psycopg.Connection[Any], role: Role) -> uuid.UUID:
    worker = uuid.uuid4()
    conn.execute(_REGISTER, (worker, host_name(), os.getpid(), role.command, role.model, role.collection, 0))
    return worker


def beat(conn: psycopg.Connection[Any], worker: uuid.UUID, role: Role | None, embedded: int) -> None:
    """Say this worker is alive; a worker reaped while it was silent (a suspended laptop) comes back
    (when its ``role`` is given)."""
    if conn.execute("update section_workers set last_beat = now(), embedded = %s where id = %s",
                    (embedded, worker)).rowcount == 0 and role is not None:
        conn.execute(_REGISTER, (worker, host_name(), os.getpid(), role.command, role.model, role.collection, embedded))


def end_worker(conn: psycopg.Connection[Any], worker: uuid.UUID) -> None:
    """The run is over: its worker row and any lease it still holds go."""
    conn.execute("delete from section_workers where id = %s", (worker,))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reap(conn: psycopg.Connection[Any]) -> int:
    """Delete dead workers (and so their leases); returns how many."""
    here = conn.execute("select id, pid from section_workers where host = %s", (host_name(),)).fetchall()
    gone = [worker for worker, pid in here if pid != os.getpid() and not _alive(int(pid))]
    return conn.execute(
        "delete from section_workers where id = any(%s) or last_beat < now() - make_interval(secs => %s)",
        (gone, WORKER_TTL)).rowcount


def take(conn: psycopg.Connection[Any], worker: uuid.UUID, model: str, wanted: Mapping[str, bytes]) -> set[str]:
    """Lease, for ``worker``, the sections of ``wanted`` (id → the fingerprint to embed) that are
    still due and that no other run holds; returns the ids now leased. One transaction."""
    if not wanted:
        return set()
    params = {"model": model, "worker": worker, "ids": list(wanted), "digests": list(wanted.values())}
    with conn.transaction():
        taken = {row[0] for row in conn.execute(_TAKE, params).fetchall()}
        if taken:
            taken -= {row[0] for row in conn.execute(_DONE_MEANWHILE, params).fetchall()}
    return taken


def release(conn: psycopg.Connection[Any], model: str, section_ids: Sequence[str]) -> None:
    """Drop the leases of sections whose vector or failure is being written (any worker's)."""
    conn.execute("delete from section_leases where model_name = %s and section_id = any(%s)", (model, list(section_ids)))
