"""Nearest sections to a query: the store's searches, through the SQL functions RPC callers use.

``match_sections`` and ``hybrid_match_sections`` (migration 005) hold the one query each: the
expression and literal predicates the partial HNSW index needs, the filters, pgvector 0.8's
iterative scan for a filtered search, the fusion of full-text and vector ranks. The store calls
them as a Supabase client would, so what the CLI finds and what an RPC finds cannot drift apart.
"""
from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from sections.records import SearchFilter

__all__ = ["GROUP_OVERFETCH", "Hit", "Match", "Parent", "SNIPPET_CHARS", "match_sections", "nearest"]

SNIPPET_CHARS = 240
GROUP_OVERFETCH = 4  # candidates per hit asked for when hits are grouped by parent
MAX_CANDIDATES = 1000  # pgvector's ceiling for hnsw.ef_search: more could not come back from one scan
NO_FILTER = SearchFilter()


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
    content: NotRequired[str]  # the whole content, when asked for (``full``)
    rrf_score: NotRequired[float]  # hybrid search: the fused rank score hits are ordered by


class Match(TypedDict):
    id: str
    title: str
    content: str
    similarity: float
    metadata: Any


_ARGS = "%(q)b, %(k)s, %(model)s, %(filter)s, %(collection)s, %(sources)s"
_VECTOR = sql.SQL("null::float8 from match_sections(" + _ARGS + ")")
_HYBRID = sql.SQL("rrf_score from hybrid_match_sections(%(text)s, " + _ARGS + ")")


def _params(vector: np.ndarray, model_name: str | None, k: int, collection: str | None, where: SearchFilter,
            text: str | None = None) -> dict[str, Any]:
    return {"q": vector, "k": k, "model": model_name, "filter": Jsonb(dict(where.metadata)),
            "collection": collection, "sources": list(where.sources) or None, "text": text}


def nearest(conn: psycopg.Connection[Any], vector: np.ndarray, model_name: str, k: int, *, group: bool = False,
            collection: str | None = None, where: SearchFilter = NO_FILTER, text: str | None = None,
            full: bool = False) -> list[Hit]:
    """The ``k`` best sections of ``collection`` (None: any) that pass ``where``, best first: by
    cosine similarity, or with ``text`` by the fusion of full-text and vector ranks (hybrid).

    ``group``: one hit per parent section (its best chunk), so one long page cut into many chunks
    cannot fill every place; ``GROUP_OVERFETCH`` × k candidates are read to find k parents.
    ``full``: each hit also carries the section's whole ``content`` (else only its snippet leaves
    the server).
    """
    limit = min(MAX_CANDIDATES, k * GROUP_OVERFETCH) if group else k
    content = sql.SQL("content") if full else sql.SQL("left(content, {})").format(sql.Literal(SNIPPET_CHARS))
    statement = sql.SQL("select id, title, {content}, similarity, metadata, {rest}").format(
        content=content, rest=_VECTOR if text is None else _HYBRID)
    rows = conn.execute(statement, _params(vector, model_name, limit, collection, where, text)).fetchall()
    hits = [_hit(*row, full=full) for row in rows]  # in the function's order: best first
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


def _hit(section_id: str, title: str, content: str | None, score: float, metadata: Any, rank: float | None,
         *, full: bool) -> Hit:
    parent = None
    if isinstance(metadata, dict) and isinstance(metadata.get("parent"), str):
        parent = Parent(id=metadata["parent"], title=str(metadata.get("parent_title") or ""))
    text = content or ""
    hit = Hit(id=section_id, title=title, score=float(score), snippet=" ".join(text[:SNIPPET_CHARS].split()),
              metadata=metadata, parent=parent)
    if full:
        hit["content"] = text
    if rank is not None:
        hit["rrf_score"] = float(rank)
    return hit


def match_sections(conn: psycopg.Connection[Any], vector: np.ndarray, match_count: int, model_name: str | None,
                   collection: str | None = None, where: SearchFilter = NO_FILTER) -> list[Match]:
    """The ``match_sections`` SQL function, as Supabase RPC callers use it."""
    rows = conn.execute(sql.SQL("select id, title, content, similarity, metadata from match_sections(" + _ARGS + ")"),
                        _params(vector, model_name, match_count, collection, where)).fetchall()
    return [Match(id=r[0], title=r[1], content=r[2], similarity=r[3], metadata=r[4]) for r in rows]
