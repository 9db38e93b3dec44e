"""A model's footprint in the database, and dropping it: vectors, failures, leases, indexes.

A typo'd model name leaves a phantom model in ``status`` for good, and an abandoned model keeps
its vectors and its HNSW indexes (hundreds of MB at large dimensions); dropping is one transaction,
so a failure part-way leaves everything in place.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from sections.postgres.index import index_prefix

__all__ = ["DroppedModel", "drop_model", "model_indexes"]


class DroppedModel(NamedTuple):
    vectors: int
    failures: int
    indexes: list[str]


def model_indexes(conn: psycopg.Connection[Any], model_name: str) -> list[str]:
    """The HNSW indexes built for ``model_name``, whatever their dimension."""
    prefix = index_prefix(model_name)
    rows = conn.execute(
        "select indexname from pg_indexes where schemaname = current_schema() and tablename = 'section_embeddings' "
        "and starts_with(indexname, %s) order by indexname", (prefix,)).fetchall()
    return [row[0] for row in rows]


def drop_model(conn: psycopg.Connection[Any], model_name: str) -> DroppedModel:
    """Inside the caller's transaction: delete the model's vectors, failures, leases and collected
    Batch API jobs, drop its indexes. Refused (ValueError) while one of its Batch API jobs is not
    collected: its results are paid for, and forgetting the job would lose them."""
    row = conn.execute("select count(*) from section_batch_jobs where model_name = %s and collected_at is null",
                       (model_name,)).fetchone()
    if row and row[0]:
        raise ValueError(f"{row[0]} Batch API job(s) of {model_name!r} are not collected yet: collect them "
                         "(sections batches --collect) or cancel them (sections batches --cancel ID) first")
    conn.execute("delete from section_batch_jobs where model_name = %s", (model_name,))
    indexes = model_indexes(conn, model_name)
    for name in indexes:
        conn.execute(sql.SQL("drop index if exists {}").format(sql.Identifier(name)))
    vectors = conn.execute("delete from section_embeddings where model_name = %s", (model_name,)).rowcount
    failures = conn.execute("delete from embedding_failures where model_name = %s", (model_name,)).rowcount
    conn.execute("delete from section_leases where model_name = %s", (model_name,))
    return DroppedModel(vectors, failures, indexes)
