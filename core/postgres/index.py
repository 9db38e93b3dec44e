"""HNSW indexes, one per model and dimension, partial on that model.

Search must match an index's expression and predicate literally for the planner to use it, which
is why the model name appears as a literal (``psycopg.sql.Literal``) in the DDL and in the k-NN
query, and why the cast (``vector(d)`` up to 2,000 dimensions, ``halfvec(d)`` up to 4,000 where
pgvector has it) is decided here for the DDL and, by the same rule, in ``match_sections()``
(migration 005) for the query.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

__all__ = [
    "HALFVEC_MAX_DIMENSIONS",
    "HNSW_MAX_DIMENSIONS",
    "StoredDimension",
    "build_indexes",
    "has_halfvec",
    "has_index",
    "index_cast",
    "index_memory",
    "index_name",
    "index_prefix",
    "stored_dimensions",
    "has_enough_rows",
    "unindexed",
]

HNSW_MAX_DIMENSIONS = 2000  # pgvector's limit for indexing the vector type
HALFVEC_MAX_DIMENSIONS = 4000  # ... and halfvec (pgvector >= 0.7)

_log = logging.getLogger(__name__)


class StoredDimension(NamedTuple):
    dimensions: int
    rows: int


def index_prefix(model_name: str) -> str:
    """What the names of a model's indexes start with: a fixed prefix and a hash of the model name."""
    tag = hashlib.blake2b(model_name.encode("utf-8"), digest_size=8).hexdigest()
    return f"section_embeddings_hnsw_{tag}_"


def index_name(model_name: str, dimensions: int) -> str:
    """The HNSW index for one model and dimension."""
    return f"{index_prefix(model_name)}{int(dimensions)}"


def has_halfvec(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("select to_regtype('halfvec') is not null").fetchone()
    return bool(row and row[0])


def index_cast(dimensions: int, halfvec: bool) -> str | None:
    """The type the index casts to for this dimension, or None if pgvector cannot index it."""
    if dimensions <= HNSW_MAX_DIMENSIONS:
        return "vector"
    if dimensions <= HALFVEC_MAX_DIMENSIONS and halfvec:
        return "halfvec"
    return None


def has_index(conn: psycopg.Connection[Any], model_name: str, dimensions: int) -> bool:
    row = conn.execute("select to_regclass(%s) is not null", (index_name(model_name, dimensions),)).fetchone()
    return bool(row and row[0])


def stored_dimensions(conn: psycopg.Connection[Any], model_name: str,
                      dimensions: int | None = None) -> list[StoredDimension]:
    """The dimensions stored for a model (or just ``dimensions``), with their row counts."""
    if dimensions is None:
        rows = conn.execute(
            "select dimensions, count(*) from section_embeddings where model_name = %s group by dimensions",
            (model_name,),
        ).fetchall()
        return [StoredDimension(int(d), int(n)) for d, n in rows]
    row = conn.execute(
        "select count(*) from section_embeddings where model_name = %s and dimensions = %s",
        (model_name, dimensions),
    ).fetchone()
    return [StoredDimension(int(dimensions), int(row[0]) if row else 0)]


def has_enough_rows(conn: psycopg.Connection[Any], model_name: str, dimensions: int, min_rows: int) -> bool:
    """Whether the model holds at least ``min_rows`` vectors of this dimension (stops counting there)."""
    row = conn.execute(
        "select count(*) from (select 1 from section_embeddings "
        "where model_name = %s and dimensions = %s limit %s) t",
        (model_name, dimensions, min_rows),
    ).fetchone()
    return bool(row and row[0] >= min_rows)


def unindexed(conn: psycopg.Connection[Any], model_name: str, dimensions: set[int], min_rows: int | None) -> list[int]:
    """Of ``dimensions``, those pgvector can index that have no index yet (and, with ``min_rows``,
    at least that many vectors), in order."""
    halfvec = has_halfvec(conn)
    return [dims for dims in sorted(dimensions)
            if index_cast(dims, halfvec) is not None and not has_index(conn, model_name, dims)
            and (min_rows is None or has_enough_rows(conn, model_name, dims, min_rows))]


def build_indexes(conn: psycopg.Connection[Any], model_name: str, *, dimensions: int | None, m: int,
                  ef_construction: int, maintenance_work_mem: str | None, max_index_memory: str) -> list[str]:
    """Build the missing HNSW index (cosine) for each dimension stored for ``model_name``.

    ``CREATE INDEX IF NOT EXISTS … USING hnsw ((embedding::vector(d)) vector_cosine_ops)
    WHERE model_name = '<model>' AND dimensions = d``, under an advisory lock so concurrent
    callers build it once, with ``maintenance_work_mem`` sized to the rows (capped by
    ``max_index_memory``). Dimensions pgvector cannot index are skipped with a warning (search
    stays exact). Returns the names of the indexes that exist for the model afterwards.
    """
    halfvec = has_halfvec(conn)
    names = []
    for dims, rows in stored_dimensions(conn, model_name, dimensions):
        cast = index_cast(dims, halfvec)
        if cast is None:
            _log.warning("%d dimensions cannot be HNSW-indexed by this pgvector; search for %r stays exact",
                         dims, model_name)
            continue
        name = index_name(model_name, dims)
        memory = maintenance_work_mem or index_memory(rows, dims, m, max_index_memory)
        statement = sql.SQL(
            "create index if not exists {name} on section_embeddings using hnsw "
            "((embedding::{cast}({dims})) {ops}) with (m = {m}, ef_construction = {efc}) "
            "where model_name = {model} and dimensions = {dims}"
        ).format(
            name=sql.Identifier(name),
            cast=sql.SQL(cast),
            dims=sql.SQL(str(int(dims))),
            ops=sql.SQL(f"{cast}_cosine_ops"),
            m=sql.SQL(str(int(m))),
            efc=sql.SQL(str(int(ef_construction))),
            model=sql.Literal(model_name),
        )
        started = time.monotonic()
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))
            conn.execute("select set_config('maintenance_work_mem', %s, true)", (memory,))
            conn.execute(statement)
        _log.info("index %s for %r (%d rows, %d dims) ready in %.1f s",
                  name, model_name, rows, dims, time.monotonic() - started)
        names.append(name)
    return names


def index_memory(rows: int, dims: int, m: int, cap: str) -> str:
    """maintenance_work_mem for an HNSW build: the graph should fit (~vector + 2·m neighbour slots + overhead)."""
    per_element = dims * 4 + 2 * m * 8 + m * 8 + 128
    needed_mb = int(rows * per_element * 1.3 / (1 << 20)) + 64
    return f"{max(64, min(needed_mb, _parse_mb(cap)))}MB"


def _parse_mb(value: str) -> int:
    text = value.strip().upper()
    for suffix, factor in (("TB", 1 << 20), ("GB", 1 << 10), ("MB", 1), ("KB", 1 / 1024)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text) // 1024  # plain number: kB, as Postgres reads it
