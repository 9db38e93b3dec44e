"""Nearest sections to a query vector: the k-NN query the HNSW index serves, and ``match_sections``.

The query repeats the partial index's expression and literal predicates exactly (see
``core.postgres.index``), else the planner falls back to an exact scan.
"""
from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import psycopg
from psycopg import sql

from core.postgres.index import HNSW_MAX_DIMENSIONS, has_halfvec, search_cast

__all__ = ["GROUP_OVERFETCH", "Hit", "Match", "Parent", "SNIPPET_CHARS", "knn_statement", "match_sections", "nearest"]

SNIPPET_CHARS = 240
GROUP_OVERFETCH = 4  # candidates per hit asked for when hits are grouped by parent
MAX_EF_SEARCH = 1000  # pgvector's ceiling for hnsw.ef_search


class Parent(TypedDict):
    id: str
    title: str


class Hit(TypedDict):
    id: str
    title: str
    score: float  # cosine similarity
    snippet: str
    metadata: Any  # the section's metadata (source, headings, line, front matter, chunk position)
    parent: Parent | None  # the section a chunk was cut from; None for a whole section


class Match(TypedDict):
    id: str
    title: str
    content: str
    similarity: float


def knn_statement(conn: psycopg.Connection[Any], model_name: str, dimensions: int,
                  snippet_chars: int = SNIPPET_CHARS, collection: str | None = None) -> sql.Composed:
    """The k-NN query, with the exact expression and literal predicates of the partial index;
    ``collection`` (None: all) filters the index's candidates."""
    # the server is asked about halfvec only where the answer matters: no round trip per query below 2,000 dims
    halfvec = dimensions > HNSW_MAX_DIMENSIONS and has_halfvec(conn)
    typed = sql.SQL(f"{search_cast(dimensions, halfvec)}({int(dimensions)})")
    return sql.SQL(
        "select s.id, s.title, (1 - (e.embedding::{t} <=> %(q)b::{t}))::float8 as score, "
        "left(s.content, {snip}) as snippet, s.metadata "
        "from section_embeddings e join sections s on s.id = e.section_id "
        "where e.model_name = {model} and e.dimensions = {d} {collection}"
        "order by e.embedding::{t} <=> %(q)b::{t} limit %(k)s"
    ).format(t=typed, snip=sql.SQL(str(int(snippet_chars))), model=sql.Literal(model_name),
             d=sql.SQL(str(int(dimensions))),
             collection=sql.SQL("and s.collection = %(collection)s ") if collection is not None else sql.SQL(""))


# pgvector >= 0.8 keeps scanning the index until a filter has let enough rows through; older
# versions reserve the "hnsw." prefix and refuse the setting, so it is set only where it exists.
_SCAN_SETTINGS = (
    "select set_config('hnsw.ef_search', %(ef)s, true), "
    "case when %(filtered)s and exists (select 1 from pg_settings where name = 'hnsw.iterative_scan') "
    "then set_config('hnsw.iterative_scan', 'relaxed_order', true) end"
)


def nearest(conn: psycopg.Connection[Any], vector: np.ndarray, model_name: str, k: int,
            group: bool = False, collection: str | None = None) -> list[Hit]:
    """The ``k`` nearest sections of ``collection`` (None: any), best first. An HNSW scan returns
    at most ``hnsw.ef_search`` rows, so it is raised to the rows asked for (up to 1000) for this
    transaction; with a collection, pgvector 0.8's iterative scan keeps a small one from coming
    back short.

    ``group``: one hit per parent section (its best chunk), so one long page cut into many chunks
    cannot fill every place; ``GROUP_OVERFETCH`` × k candidates are read to find k parents.
    """
    limit = min(MAX_EF_SEARCH, k * GROUP_OVERFETCH) if group else k
    with conn.transaction():
        conn.execute(_SCAN_SETTINGS, {"ef": str(max(40, min(limit, MAX_EF_SEARCH))), "filtered": collection is not None})
        rows = conn.execute(knn_statement(conn, model_name, vector.shape[0], collection=collection),
                            {"q": vector, "k": limit, "collection": collection}).fetchall()
    hits = sorted((_hit(*row) for row in rows), key=lambda hit: -hit["score"])  # relaxed order: sort the few
    if not group:
        return hits
    seen: set[str] = set()
    best = []
    for hit in hits:
        key = hit["parent"]["id"] if hit["parent"] else hit["id"]
        if key not in seen:
            seen.add(key)
            best.append(hit)
    return best[:k]


def _hit(section_id: str, title: str, score: float, snippet: str | None, metadata: Any) -> Hit:
    parent = None
    if isinstance(metadata, dict) and isinstance(metadata.get("parent"), str):
        parent = Parent(id=metadata["parent"], title=str(metadata.get("parent_title") or ""))
    return Hit(id=section_id, title=title, score=float(score), snippet=" ".join((snippet or "").split()),
               metadata=metadata, parent=parent)


def match_sections(conn: psycopg.Connection[Any], vector: np.ndarray, match_count: int,
                   model_name: str | None) -> list[Match]:
    """The ``match_sections`` SQL function, as Supabase RPC callers use it."""
    with conn.transaction():
        rows = conn.execute("select id, title, content, similarity from match_sections(%b, %s, %s)",
                            (vector, match_count, model_name)).fetchall()
    return [Match(id=r[0], title=r[1], content=r[2], similarity=r[3]) for r in rows]
