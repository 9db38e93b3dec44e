"""Nearest sections to a query vector: the k-NN query the HNSW index serves, and ``match_sections``.

The query repeats the partial index's expression and literal predicates exactly (see
``core.postgres.index``), else the planner falls back to an exact scan.
"""
from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import psycopg
from psycopg import sql

from core.postgres.index import has_halfvec, search_cast

__all__ = ["Hit", "Match", "SNIPPET_CHARS", "knn_statement", "match_sections", "nearest"]

SNIPPET_CHARS = 240
MAX_EF_SEARCH = 1000  # pgvector's ceiling for hnsw.ef_search


class Hit(TypedDict):
    id: str
    title: str
    score: float  # cosine similarity
    snippet: str


class Match(TypedDict):
    id: str
    title: str
    content: str
    similarity: float


def knn_statement(conn: psycopg.Connection[Any], model_name: str, dimensions: int,
                  snippet_chars: int = SNIPPET_CHARS) -> sql.Composed:
    """The k-NN query, with the exact expression and literal predicates of the partial index."""
    typed = sql.SQL(f"{search_cast(dimensions, has_halfvec(conn))}({int(dimensions)})")
    return sql.SQL(
        "select s.id, s.title, (1 - (e.embedding::{t} <=> %(q)b::{t}))::float8 as score, "
        "left(s.content, {snip}) as snippet "
        "from section_embeddings e join sections s on s.id = e.section_id "
        "where e.model_name = {model} and e.dimensions = {d} "
        "order by e.embedding::{t} <=> %(q)b::{t} limit %(k)s"
    ).format(t=typed, snip=sql.SQL(str(int(snippet_chars))), model=sql.Literal(model_name),
             d=sql.SQL(str(int(dimensions))))


def nearest(conn: psycopg.Connection[Any], vector: np.ndarray, model_name: str, k: int) -> list[Hit]:
    """The ``k`` nearest sections, best first. An HNSW scan returns at most ``hnsw.ef_search`` rows,
    so it is raised to ``k`` (up to 1000) for this transaction."""
    with conn.transaction():
        conn.execute("select set_config('hnsw.ef_search', %s, true)", (str(max(40, min(k, MAX_EF_SEARCH))),))
        rows = conn.execute(knn_statement(conn, model_name, vector.shape[0]), {"q": vector, "k": k}).fetchall()
    return [Hit(id=r[0], title=r[1], score=float(r[2]), snippet=" ".join((r[3] or "").split())) for r in rows]


def match_sections(conn: psycopg.Connection[Any], vector: np.ndarray, match_count: int,
                   model_name: str | None) -> list[Match]:
    """The ``match_sections`` SQL function, as Supabase RPC callers use it."""
    with conn.transaction():
        rows = conn.execute("select id, title, content, similarity from match_sections(%b, %s, %s)",
                            (vector, match_count, model_name)).fetchall()
    return [Match(id=r[0], title=r[1], content=r[2], similarity=r[3]) for r in rows]
