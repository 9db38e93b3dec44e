"""The store's searches: by vector, by query text, hybrid, filtered, and the ``match_sections`` RPC
as a Python call.

A part ``SupabaseStore`` holds (``store.searches``) and hands this work to; it is given only a way to
open a connection. Arguments are checked here, before any query: a bad filter or vector is a
``ValueError`` naming what is wrong, never a database error.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sections.postgres.database import Connect
from sections.store.lifecycle import check_collection, check_model
from sections.postgres import search as pg_search
from sections.records import DEFAULT_COLLECTION, Embedder, SearchFilter, check_vector

__all__ = ["Filter", "Searches"]

Filter = SearchFilter | Mapping[str, Any] | None  # a mapping: the metadata the sections must contain


class Searches:
    def __init__(self, connect: Connect):
        self.connection = connect

    def search_by_vector(self, vector: Any, model_name: str, k: int = 10, *, group: bool = True,
                         collection: str | None = DEFAULT_COLLECTION, filter: Filter = None,
                         text: str | None = None, full: bool = False) -> list[pg_search.Hit]:
        """The ``k`` sections of ``collection`` (None: all) nearest to ``vector`` (cosine) among
        ``model_name``'s embeddings: ``[{id, title, score, snippet, metadata, parent}]``, best
        first; ``group``: one per parent. Uses the model's HNSW index when it exists.

        ``filter``: a ``SearchFilter`` (metadata containment, source files and folders), or a
        mapping, read as the metadata the sections must contain. ``text``: hybrid search, the
        vector's ranking fused with the full-text ranking of these words (each hit then has an
        ``rrf_score``, which orders them). ``full``: each hit carries its whole ``content``.
        """
        check_model(model_name)
        if collection is not None:
            check_collection(collection)
        where = _search_filter(filter)
        if int(k) < 1:
            return []
        array = _query_vector(vector)
        with self.connection() as conn:
            return pg_search.nearest(conn, array, model_name, int(k), group=group, collection=collection, where=where,
                                     text=text, full=full)

    def search(self, query: str, embedding_service: Embedder, k: int = 10, *, group: bool = True,
               collection: str | None = DEFAULT_COLLECTION, filter: Filter = None,
               hybrid: bool = False, full: bool = False) -> list[pg_search.Hit]:
        """Embed ``query`` with ``embedding_service``; the ``k`` best sections, as ``search_by_vector``
        (``hybrid``: the query's words are also ranked by full text, and the two rankings fused)."""
        vector = embedding_service.generate_embedding(query)
        return self.search_by_vector(vector, embedding_service.settings.model, k, group=group, collection=collection,
                                     filter=filter, text=query if hybrid else None, full=full)

    def match_sections(self, query_embedding: Any, match_count: int = 10, model_name: str | None = None, *,
                       filter: Filter = None,
                       collection: str | None = None) -> list[pg_search.Match]:
        """Call the ``match_sections`` SQL function (what Supabase RPC callers use)."""
        array = _query_vector(query_embedding)
        where = _search_filter(filter)
        with self.connection() as conn:
            return pg_search.match_sections(conn, array, match_count, model_name, collection, where)


def _search_filter(given: Filter) -> SearchFilter:
    where = SearchFilter(metadata=given) if isinstance(given, Mapping) else given or SearchFilter()
    if problem := where.problem():
        raise ValueError(problem)
    return where


def _query_vector(vector: Any) -> np.ndarray:
    array, problem = check_vector(vector)
    if array is None:
        raise ValueError(f"query vector: {problem}")
    return array
