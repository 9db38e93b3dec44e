"""Batch API jobs in Postgres: recorded before they run, resumed by any later run, collected once.

A job row and its items (the sections it covers, each with the fingerprint of the text sent) are
written in one transaction that also drops the leases the submitting run held on those sections,
so from then on the items, not the run, keep every other run (ingest, sync, another batch run)
from paying for them again (``sections.postgres.leases`` and ``sections.postgres.claims`` check both).
Collecting writes a vector only where the section's fingerprint, computed in SQL from what is
stored now, still equals the item's: a section edited while its job ran keeps its newer vector
(or stays due) instead of getting the stale one. Items go as their results are written, so a
collection cut short resumes where it stopped.
"""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from sections.batch.records import BatchState, BatchStatus, JobItem, JobRecord, JobWrite, NewJob, Slot
from sections.postgres import vectors
from sections.records import EmbeddingSettings, FailureRow, Section, VectorRow

__all__ = ["hold", "close", "forget", "items", "job", "jobs", "open_jobs", "polled", "record",
           "resendable", "write_results"]

_ITEM_STAGE = "_sections_batch_item_stage"
_ITEM_STAGE_DDL = (
    "set local client_min_messages = warning; "
    f"create temp table if not exists {_ITEM_STAGE} (section_id text, content_hash bytea, requests int[], "
    f"positions int[], weights int[], attempt int) on commit delete rows; delete from {_ITEM_STAGE}"
)
_ITEM_COPY = (f"copy {_ITEM_STAGE} (section_id, content_hash, requests, positions, weights, attempt) "
              "from stdin (format binary)")
_INSERT_JOB = """
insert into section_batch_jobs (id, model_name, requested_dimensions, long_input, collection, endpoint, status,
                                input_file_id, worker_id, requests, inputs, sections, tokens)
values (%(id)s, %(model)s, %(dims)s, %(policy)s, %(collection)s, %(endpoint)s, 'submitting', %(file)s, %(worker)s,
        %(requests)s, %(inputs)s, %(sections)s, %(tokens)s)
"""
_MOVE_ITEMS = f"""
with moved as (
    delete from section_batch_items i using {_ITEM_STAGE} s
     where i.job_id = %(old)s and i.section_id = s.section_id
    returning i.section_id)
update section_batch_jobs set retried = retried + (select count(*) from moved) where id = %(old)s
"""
_INSERT_ITEMS = f"""
insert into section_batch_items (job_id, section_id, model_name, content_hash, requests, positions, weights, attempt)
select %(id)s, section_id, %(model)s, content_hash, requests, positions, weights, attempt from {_ITEM_STAGE}
"""
_RELEASE_LEASES = f"""
delete from section_leases l using {_ITEM_STAGE} s where l.model_name = %(model)s and l.section_id = s.section_id
"""
_JOB_COLUMNS = """
select j.id, j.model_name, j.requested_dimensions, j.long_input, j.collection, j.endpoint, j.status, j.batch_id,
       j.input_file_id, j.output_file_id, j.error_file_id, j.worker_id is not null, j.requests, j.inputs,
       j.sections, j.tokens, j.total, j.completed, j.failed, extract(epoch from now() - j.created_at)::float8,
       extract(epoch from j.created_at)::float8, j.collected_at is not null, j.written, j.failures, j.changed,
       j.retried, j.errors
  from section_batch_jobs j
"""
_SETTINGS_MATCH = """
 j.model_name = %(model)s and j.requested_dimensions is not distinct from %(dims)s
 and j.long_input is not distinct from %(policy)s
"""
# The job's items whose section still holds the text they were sent with, locked against edits
# until the results are written (an edit waits, and then makes the vector stale in the usual way).
_CURRENT = """
select i.section_id,
       sections_content_hash(s.title, s.content, %(model)s, %(dims)s, %(policy)s) = i.content_hash
  from section_batch_items i join sections s on s.id = i.section_id
 where i.job_id = %(job)s and i.section_id = any(%(ids)s)
 order by s.id
   for share of s
"""
# The first report with a batch id ends the submitting run's hold: from then on any run may collect it.
_RESENDABLE = """
select s.id, s.title, s.content
  from section_batch_items i join sections s on s.id = i.section_id
 where i.job_id = %(job)s and i.section_id = any(%(ids)s)
   and sections_content_hash(s.title, s.content, %(model)s, %(dims)s, %(policy)s) = i.content_hash
   and not exists (select 1 from section_embeddings e
                    where e.section_id = s.id and e.model_name = %(model)s and e.content_hash = i.content_hash)
 order by s.id
"""
_POLLED = """
update section_batch_jobs
   set batch_id = coalesce(%(batch)s, batch_id), status = %(status)s, total = %(total)s, completed = %(completed)s,
       failed = %(failed)s, output_file_id = %(output)s, error_file_id = %(error)s, errors = %(errors)s,
       polled_at = now(), finished_at = case when %(finished)s then coalesce(finished_at, now()) end,
       worker_id = case when batch_id is null and %(batch)s::text is not null then null else worker_id end
 where id = %(job)s
"""


def _settings_params(settings: EmbeddingSettings) -> dict[str, Any]:
    return {"model": settings.model, "dims": settings.dimensions, "policy": settings.long_input_name}


def _record(row: Sequence[Any]) -> JobRecord:
    settings = EmbeddingSettings.stored(row[1], row[2], row[3])
    return JobRecord(str(row[0]), settings, row[4], row[5], BatchStatus(row[6]), *row[7:])


def record(conn: psycopg.Connection[Any], job: NewJob, worker: uuid.UUID, replaces: str | None = None) -> None:
    """Record ``job`` and its items, owned by ``worker`` until its batch id is known, and drop the
    leases on its sections; with ``replaces``, its sections' items leave that older job in the same
    transaction (what a retry moves). One transaction."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_INSERT_JOB, {**_settings_params(job.settings), "id": job.id, "collection": job.collection,
                                  "endpoint": job.endpoint, "file": job.input_file_id, "worker": worker,
                                  "requests": job.requests, "inputs": job.inputs, "sections": len(job.items),
                                  "tokens": job.tokens})
        cur.execute(_ITEM_STAGE_DDL)
        with cur.copy(_ITEM_COPY) as copy:
            copy.set_types(["text", "bytea", "int4[]", "int4[]", "int4[]", "int4"])
            for item in job.items:
                copy.write_row((item.section_id, item.digest, [s.request for s in item.slots],
                                [s.position for s in item.slots], [s.weight for s in item.slots], item.attempt))
        if replaces is not None:
            cur.execute(_MOVE_ITEMS, {"old": replaces})
        cur.execute(_INSERT_ITEMS, {"id": job.id, "model": job.settings.model})
        cur.execute(_RELEASE_LEASES, {"model": job.settings.model})


def hold(conn: psycopg.Connection[Any], job_id: str, worker: uuid.UUID) -> bool:
    """Make ``worker`` the one run handling an open job: submitting it after its first submitter died
    before recording its batch id, or collecting it. False when another live run handles it."""
    return conn.execute("update section_batch_jobs set worker_id = %(worker)s where id = %(job)s "
                        "and collected_at is null and (worker_id is null or worker_id = %(worker)s)",
                        {"worker": worker, "job": job_id}).rowcount == 1


def polled(conn: psycopg.Connection[Any], job_id: str, state: BatchState) -> None:
    """What the provider last said of the job's batch (its id too, the first time)."""
    params = {"job": job_id, "batch": state.batch_id, "status": state.status.value, "total": state.total,
              "completed": state.completed, "failed": state.failed, "output": state.output_file_id,
              "error": state.error_file_id, "errors": "\n".join(state.errors) or None,
              "finished": state.status.finished}
    conn.execute(_POLLED, params)


def forget(conn: psycopg.Connection[Any], job_id: str) -> None:
    """A job whose batch was never created: nothing was paid, its sections are due again."""
    conn.execute("delete from section_batch_jobs where id = %s and batch_id is null", (job_id,))


def open_jobs(conn: psycopg.Connection[Any], settings: EmbeddingSettings | None, endpoint: str | None) -> list[JobRecord]:
    """Jobs not yet collected, oldest first; only those made with ``settings`` at ``endpoint`` when given."""
    where = "j.collected_at is null"
    params: dict[str, Any] = {"endpoint": endpoint}
    if settings is not None:
        where += f" and {_SETTINGS_MATCH}"
        params.update(_settings_params(settings))
    if endpoint is not None:
        where += " and j.endpoint = %(endpoint)s"
    rows = conn.execute(f"{_JOB_COLUMNS} where {where} order by j.created_at, j.id", params).fetchall()
    return [_record(row) for row in rows]


def jobs(conn: psycopg.Connection[Any], limit: int) -> list[JobRecord]:
    """The newest ``limit`` jobs, open or collected, newest first."""
    rows = conn.execute(f"{_JOB_COLUMNS} order by j.created_at desc, j.id limit %s", (limit,)).fetchall()
    return [_record(row) for row in rows]


def job(conn: psycopg.Connection[Any], key: str) -> JobRecord | None:
    """A job by its record id or its batch id."""
    row = conn.execute(f"{_JOB_COLUMNS} where j.id::text = %(key)s or j.batch_id = %(key)s", {"key": key}).fetchone()
    return None if row is None else _record(row)


def items(conn: psycopg.Connection[Any], job_id: str) -> list[JobItem]:
    rows = conn.execute("select section_id, content_hash, requests, positions, weights, attempt "
                        "from section_batch_items where job_id = %s", (job_id,)).fetchall()
    return [JobItem(section_id, bytes(digest), tuple(Slot(*slot) for slot in zip(requests, positions, weights)), attempt)
            for section_id, digest, requests, positions, weights, attempt in rows]


def resendable(conn: psycopg.Connection[Any], settings: EmbeddingSettings, job_id: str,
               section_ids: Sequence[str]) -> list[Section]:
    """Of these sections of the job, those still holding the text sent and with no vector of it
    stored (by any run meanwhile): what a retry may send, and nothing else."""
    rows = conn.execute(_RESENDABLE, {**_settings_params(settings), "job": job_id, "ids": list(section_ids)}).fetchall()
    return [Section(section_id, title or "", content or "") for section_id, title, content in rows]


def write_results(conn: psycopg.Connection[Any], settings: EmbeddingSettings, job_id: str,
                  successes: Sequence[VectorRow], failures: Sequence[FailureRow]) -> JobWrite:
    """Write a part of a job's results inside the caller's transaction: only those whose section
    still holds the text sent (the rest are ``changed``, left alone); a section that is gone is
    reported as ``missing``. The items of every section named leave the job."""
    ids = [row.section_id for row in successes] + [row.section_id for row in failures]
    params = {**_settings_params(settings), "job": job_id, "ids": ids}
    current = {section_id: same for section_id, same in conn.execute(_CURRENT, params).fetchall()}
    kept = [row for row in successes if current.get(row.section_id, True)]  # gone: write_batch reports it
    failed = [row for row in failures if current.get(row.section_id, False)]
    changed = [section_id for section_id, same in current.items() if not same]
    result = vectors.write_batch(conn, settings, kept, failed)
    conn.execute("delete from section_batch_items where job_id = %s and section_id = any(%s)", (job_id, ids))
    conn.execute("update section_batch_jobs set written = written + %s, failures = failures + %s, "
                 "changed = changed + %s where id = %s",
                 (result.written, len(failed) + len(result.rejected), len(changed), job_id))
    return JobWrite(kept, failed, result, changed)


def close(conn: psycopg.Connection[Any], job_id: str, billed_tokens: int) -> None:
    """The job is collected: its remaining items (released, or handed on) go, its bill is kept."""
    with conn.transaction():
        conn.execute("delete from section_batch_items where job_id = %s", (job_id,))
        conn.execute("update section_batch_jobs set collected_at = now(), billed_tokens = billed_tokens + %s "
                     "where id = %s", (billed_tokens, job_id))
