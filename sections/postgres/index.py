"""HNSW indexes, one per model and dimension, partial on that model: names, casts, and what a model lacks.

Search must match an index's expression and predicate literally for the planner to use it, which
is why the model name appears as a literal (``psycopg.sql.Literal``) in the DDL and in the k-NN
query, and why the cast (``vector(d)`` up to 2,000 dimensions, ``halfvec(d)`` up to 4,000 where
pgvector has it) is decided here for the DDL and, by the same rule, in ``match_sections()``
(migration 005) for the query.

What a model lacks is read from the catalog and from ``section_embeddings_model_dimensions_idx``
(migration 007), never by reading every vector: ``plan_indexes`` runs after every ingest. An index
counts only when it is valid (``pg_index.indisvalid``): a ``CREATE INDEX CONCURRENTLY`` that did not
finish leaves an invalid one behind, which the planner never uses but every write still maintains,
so the plan drops it and builds it again. The index of a dimension the model no longer stores
(vectors re-embedded with another ``--dimensions``) is dropped too.
"""
from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

__all__ = [
    "HALFVEC_MAX_DIMENSIONS",
    "HNSW_MAX_DIMENSIONS",
    "IndexPlan",
    "IndexState",
    "StoredDimension",
    "drop_index",
    "has_halfvec",
    "has_index",
    "index_cast",
    "index_name",
    "index_prefix",
    "index_states",
    "lock_for_build",
    "missing_indexes",
    "plan_indexes",
    "stored_dimensions",
    "vector_count",
]

HNSW_MAX_DIMENSIONS = 2000  # pgvector's limit for indexing the vector type
HALFVEC_MAX_DIMENSIONS = 4000  # ... and halfvec (pgvector >= 0.7)


class StoredDimension(NamedTuple):
    dimensions: int
    rows: int


class IndexState(NamedTuple):
    name: str
    dimensions: int
    valid: bool  # usable by the planner: built to the end (indisvalid and indisready)


class IndexPlan(NamedTuple):
    """What a model's indexes need, read in one go; ``sections.postgres.index_build.ensure`` carries it out."""

    build: list[StoredDimension]  # stored dimensions without a valid index (with enough rows), in order
    invalid: list[IndexState]  # left invalid by a build that did not finish: dropped (and rebuilt if due)
    stale: list[IndexState]  # of dimensions no longer stored for the model: dropped
    unindexable: list[int]  # dimensions this pgvector cannot index: search for them stays exact


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


def index_states(conn: psycopg.Connection[Any], model_name: str) -> dict[int, IndexState]:
    """The model's HNSW indexes by dimension, valid or not (from the catalog: no table read)."""
    prefix = index_prefix(model_name)
    rows = conn.execute(
        "select c.relname, i.indisvalid and i.indisready from pg_index i join pg_class c on c.oid = i.indexrelid "
        "where i.indrelid = to_regclass('section_embeddings') and starts_with(c.relname, %s)", (prefix,)).fetchall()
    states = {}
    for name, valid in rows:
        suffix = name[len(prefix):]
        if suffix.isdigit():
            states[int(suffix)] = IndexState(name, int(suffix), bool(valid))
    return states


def has_index(conn: psycopg.Connection[Any], model_name: str, dimensions: int) -> bool:
    """Whether the model has a valid (usable) index for this dimension."""
    state = index_states(conn, model_name).get(int(dimensions))
    return state is not None and state.valid


# The distinct dimensions of one model as a loose scan of (model_name, dimensions): one index probe
# per dimension, however many vectors the model holds.
_DIMENSIONS = """
with recursive d(dimensions) as (
    (select dimensions from section_embeddings where model_name = %(m)s order by dimensions limit 1)
    union all
    select (select e.dimensions from section_embeddings e
             where e.model_name = %(m)s and e.dimensions > d.dimensions order by e.dimensions limit 1)
      from d where d.dimensions is not null
)
select dimensions from d where dimensions is not null
"""


def stored_dimensions(conn: psycopg.Connection[Any], model_name: str) -> list[int]:
    """The dimensions the model's vectors have, in order."""
    return [int(row[0]) for row in conn.execute(_DIMENSIONS, {"m": model_name}).fetchall()]


def vector_count(conn: psycopg.Connection[Any], model_name: str, dimensions: int, limit: int | None = None) -> int:
    """How many vectors of this dimension the model holds (counting stops at ``limit``)."""
    row = conn.execute(
        "select count(*) from (select 1 from section_embeddings where model_name = %s and dimensions = %s "
        "limit %s) t", (model_name, dimensions, limit)).fetchone()
    return int(row[0]) if row else 0


def plan_indexes(conn: psycopg.Connection[Any], model_name: str, *, dimensions: int | None,
                 min_rows: int | None) -> IndexPlan:
    """What the model's indexes need: which to build (only ``dimensions`` when given; only with
    ``min_rows`` vectors or more when given), which invalid or stale ones to drop."""
    states = index_states(conn, model_name)
    stored = stored_dimensions(conn, model_name)
    halfvec = has_halfvec(conn)
    build, unindexable = [], []
    for dims in stored:
        if dimensions is not None and dims != dimensions:
            continue
        if index_cast(dims, halfvec) is None:
            unindexable.append(dims)
            continue
        state = states.get(dims)
        if state is not None and state.valid:
            continue
        if min_rows is not None and vector_count(conn, model_name, dims, min_rows) < min_rows:
            continue
        build.append(StoredDimension(dims, vector_count(conn, model_name, dims)))
    return IndexPlan(
        build=build,
        invalid=[state for dims, state in sorted(states.items()) if dims in stored and not state.valid],
        stale=[state for dims, state in sorted(states.items()) if dims not in stored],
        unindexable=unindexable,
    )


def missing_indexes(conn: psycopg.Connection[Any], model_name: str, min_rows: int | None) -> list[int]:
    """The indexable dimensions with ``min_rows`` vectors or more (None: any) that have no valid
    index: their searches read every vector."""
    return [stored.dimensions for stored in plan_indexes(conn, model_name, dimensions=None, min_rows=min_rows).build]


def lock_for_build(conn: psycopg.Connection[Any], name: str) -> None:
    """Inside the caller's transaction: no statement timeout for this transaction (``set local``:
    a build of 20k x 3,072 takes minutes, and Supabase cancels ``postgres``'s statements after 2),
    then the advisory lock that makes concurrent callers build or drop one index once."""
    conn.execute("select set_config('statement_timeout', '0', true)")
    conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))


def drop_index(conn: psycopg.Connection[Any], model_name: str, dimensions: int) -> bool:
    """Drop the model's index of this dimension if, under the build lock, it is still invalid or its
    dimension still unstored (another process may have rebuilt it, or stored vectors of it, since the
    plan). Its own short transaction: ``DROP INDEX`` locks the table until commit. True if dropped."""
    name = index_name(model_name, dimensions)
    with conn.transaction():
        lock_for_build(conn, name)
        state = index_states(conn, model_name).get(int(dimensions))
        if state is None or (state.valid and vector_count(conn, model_name, dimensions, 1) > 0):
            return False
        conn.execute(sql.SQL("drop index if exists {}").format(sql.Identifier(name)))
    return True
