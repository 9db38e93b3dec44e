"""Claiming stale sections for one worker, so many processes can sync at once without overlap.

A claim is a short transaction that commits at once: ``claim_due`` locks up to ``limit`` sections
whose stored vector for the model is missing or out of date (``FOR NO KEY UPDATE SKIP LOCKED``, so
rows another worker is claiming are skipped, and the writer's foreign-key checks are not blocked)
and turns them into leases of the claiming worker (``sections.postgres.leases``). No transaction
stays open while the sections are embedded (a pooler's timeouts, or a dropped connection, would
undo the whole claim and what was paid for it); the write that stores each outcome drops its lease,
and a dead worker's leases go with it.
"""
from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from sections.records import EmbeddingSettings, RetrySchedule, Section

__all__ = ["Claimed", "claim_due", "due_sections"]

# Probes the primary key of section_embeddings per row (a scalar subquery: no join that would
# rescan the model's rows); a missing vector, a NULL hash and a different hash all compare "distinct".
_STALE = sql.SQL(
    "(select e.content_hash from section_embeddings e"
    " where e.section_id = s.id and e.model_name = %(model)s)"
    " is distinct from sections_content_hash(s.title, s.content, %(model)s, %(dims)s, %(policy)s)"
)
# A section an ingest holds a lease on is being embedded there (sections.postgres.leases); one a Batch API
# job covers with its current text is paid for there (sections.postgres.batch_jobs).
_FREE = sql.SQL(
    "not exists (select 1 from section_leases l where l.section_id = s.id and l.model_name = %(model)s"
    " and l.worker_id is distinct from %(worker)s)"
    " and not exists (select 1 from section_batch_items i where i.section_id = s.id and i.model_name = %(model)s"
    " and i.content_hash = sections_content_hash(s.title, s.content, %(model)s, %(dims)s, %(policy)s))"
)
# A section that failed on this very fingerprint waits (attempts x delay, capped), then stops being
# tried after max_attempts until its content changes.
_RESTING = sql.SQL(
    "not exists (select 1 from embedding_failures f where f.section_id = s.id and f.model_name = %(model)s"
    " and f.content_hash = sections_content_hash(s.title, s.content, %(model)s, %(dims)s, %(policy)s)"
    " and (f.attempts >= %(max_attempts)s"
    "      or f.last_attempt_at > now() - make_interval(secs => least(f.attempts * %(delay)s, %(cap)s))))"
)
_CLAIM = sql.SQL(
    "select s.id from sections s where {after} {collection} {stale} and {free} {retry} "
    "order by s.id limit %(n)s for no key update skip locked"
)
_LEASE = sql.SQL(
    "insert into section_leases (section_id, model_name, worker_id) select id, %(model)s, %(worker)s"
    " from unnest(%(ids)s::text[]) as w(id) on conflict do nothing returning section_id"
)
# Under READ COMMITTED the claim's filter saw the snapshot taken before its row locks were
# granted: a row another worker embedded and committed in between is locked fine and still
# looks stale. A second statement (a fresh snapshot, our leases now held) finds those, and their
# leases are dropped again.
_RECHECK = sql.SQL(
    "select s.id, s.title, s.content from sections s where s.id = any(%(ids)s) and {stale} and {free} order by s.id"
).format(stale=_STALE, free=_FREE)
_UNLEASE = sql.SQL(
    "delete from section_leases where worker_id = %(worker)s and model_name = %(model)s and section_id = any(%(ids)s)"
)
_DUE = sql.SQL(
    "select s.id, s.title, s.content from sections s where {after} {collection} {stale} order by s.id limit %(n)s"
)


class Claimed(NamedTuple):
    """Sections leased to the claiming worker and still due, and the last id the claim reached."""

    sections: list[Section]
    claimed: int  # rows locked, before the recheck dropped any
    last_id: str


def _params(settings: EmbeddingSettings, after: str | None, limit: int, collection: str | None,
            retry: RetrySchedule | None = None, worker: uuid.UUID | None = None) -> dict[str, Any]:
    return {"model": settings.model, "dims": settings.dimensions, "policy": settings.long_input_name, "n": limit,
            "after": after, "worker": worker, "collection": collection, "max_attempts": retry.max_attempts if retry else None,
            "delay": retry.delay_s if retry else None, "cap": retry.cap_s if retry else None}


def _filters(after: str | None, collection: str | None) -> dict[str, sql.Composable]:
    return {"after": sql.SQL("s.id > %(after)s and") if after is not None else sql.SQL(""),
            "collection": sql.SQL("s.collection = %(collection)s and") if collection is not None else sql.SQL(""),
            "stale": _STALE}


def claim_due(conn: psycopg.Connection[Any], worker: uuid.UUID, settings: EmbeddingSettings, after: str | None,
              limit: int, collection: str | None, retry: RetrySchedule | None = None) -> Claimed | None:
    """Lease to ``worker`` the next ``limit`` due sections of ``collection`` (None: any) after
    ``after`` (in id order) that no other run holds (and, with ``retry``, that are not resting
    after a failure); None when none are left. One transaction, committed before it returns."""
    params = _params(settings, after, limit, collection, retry, worker)
    query = _CLAIM.format(free=_FREE, retry=sql.SQL("and ") + _RESTING if retry else sql.SQL(""),
                          **_filters(after, collection))
    with conn.transaction():
        ids = [row[0] for row in conn.execute(query, params).fetchall()]
        if not ids:
            return None
        leased = [row[0] for row in conn.execute(_LEASE, {**params, "ids": ids}).fetchall()]
        rows = conn.execute(_RECHECK, {**params, "ids": leased}).fetchall()
        sections = [Section(section_id, title or "", content or "") for section_id, title, content in rows]
        if dropped := set(leased) - {section.id for section in sections}:
            conn.execute(_UNLEASE, {**params, "ids": list(dropped)})
    return Claimed(sections, len(ids), ids[-1])


def due_sections(conn: psycopg.Connection[Any], settings: EmbeddingSettings, after: str | None, limit: int,
                 collection: str | None) -> list[Section]:
    """The next ``limit`` due sections after ``after``, read without locking (what a dry run counts)."""
    rows = conn.execute(_DUE.format(**_filters(after, collection)), _params(settings, after, limit, collection)).fetchall()
    return [Section(section_id, title or "", content or "") for section_id, title, content in rows]
