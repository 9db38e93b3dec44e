"""LangChain over our engine and store (``pip install 'sections-pgvector[langchain]'``).

``SectionsEmbeddings`` is a LangChain ``Embeddings`` whose calls go through ``EmbeddingService``:
texts packed into requests by tokens, requests in parallel under one rate limiter, every reply
matched to its text by index, identical texts sent once; any model the command line takes, the
local one (the default: no key, no server) included. ``SectionsVectorStore`` is a LangChain
``VectorStore`` over ``SupabaseStore``: documents are sections of one collection (the document id
is the section id, unique across collections), and adding a document whose text and model have not
changed since it was stored embeds nothing, whichever ``Embeddings`` it is given. So LangChain's
indexing API (``langchain_core.indexing.index``, which deletes by id and passes its ids through)
gets cleanup from the record manager and skip-unchanged from the store, even when its record
manager forgot what it had written.

Filters, in LangChain's form, as far as the store's filter goes (metadata containment): a plain
value or ``{"$eq": value}`` per key (str, number, bool or None), and ``$and`` of such filters.
Any other operator (``$ne``, ``$lt``, ``$in``, ``$or``, ``$like``, ``$exists`` …) is refused with a
``ValueError``, never ignored. ``similarity_search_with_score`` returns cosine distance (lower is
nearer), as LangChain's ``PGVector`` does.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from sections.engine.service import EmbeddingService
from sections.fingerprint import section_text
from sections.integrations.common import (FrameworkEmbedder, OpenedStore, as_sections, embed_texts,
                                          foreign_model_name, ingest_all)
from sections.providers.local import DEFAULT_LOCAL_MODEL
from sections.records import DEFAULT_COLLECTION, Embedder, SearchFilter, Selection
from sections.store.supabase_store import SupabaseStore

__all__ = ["SectionsEmbeddings", "SectionsVectorStore", "langchain_filter"]

SCALARS = (str, int, float, bool, type(None))


class SectionsEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` over our engine: ``SectionsEmbeddings(model=..., base_url=...,
    api_key=..., dimensions=...)``, the names ``OpenAIEmbeddings`` takes. ``model`` is any model the
    command line accepts: an OpenAI model (``OPENAI_API_KEY``), any model of an OpenAI-compatible
    server at ``base_url`` (or ``$OPENAI_BASE_URL``), or a local sentence-transformers model.
    Other keywords (``concurrency``, ``rpm``, ``tpm``, ``long_input``, ``timeout``, ``cache_size``,
    ``provider``) go to ``EmbeddingService``. The async methods run the engine in a worker thread
    (it has its own parallel requests), so the event loop stays free."""

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, *, base_url: str | None = None, api_key: str | None = None,
                 dimensions: int | None = None, **options: Any):
        self.service = EmbeddingService(api_key=api_key, model=model, base_url=base_url, dimensions=dimensions,
                                        **options)

    @property
    def model(self) -> str:
        return self.service.model

    @property
    def base_url(self) -> str | None:
        return self.service.base_url

    @property
    def dimensions(self) -> int | None:
        return self.service.dimensions

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return embed_texts(self.service, texts)

    def embed_query(self, text: str) -> list[float]:
        return embed_texts(self.service, [text])[0]

    def close(self) -> None:
        """Stop the engine's threads and its HTTP client."""
        self.service.close()

    def __repr__(self) -> str:
        return f"SectionsEmbeddings(model={self.model!r}, base_url={self.base_url!r}, dimensions={self.dimensions!r})"


def langchain_filter(filter: Mapping[str, Any] | None) -> SearchFilter | None:
    """LangChain's metadata filter as the store's (metadata containment), or None when it can match
    nothing (``$and`` of two values for one key); ValueError for what containment cannot say."""
    wanted: dict[str, Any] = {}
    for key, value in _equalities(filter or {}):
        if key in wanted and wanted[key] != value:
            return None
        wanted[key] = value
    return SearchFilter(metadata=wanted)


_SUPPORTED = "a plain value or {'$eq': value} per key (str, number, bool, None), and $and of such filters"


def _equalities(filter: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    if not isinstance(filter, Mapping):
        raise ValueError(f"filter must be a dict, not {type(filter).__name__}")
    for key, value in filter.items():
        if not isinstance(key, str):
            raise ValueError(f"filter keys must be strings, not {type(key).__name__}")
        if key == "$and":
            if not isinstance(value, (list, tuple)):
                raise ValueError("$and takes a list of filters")
            for inner in value:
                yield from _equalities(inner)
        elif key.startswith("$"):
            raise ValueError(f"filter operator {key} is not supported; SectionsVectorStore filters by {_SUPPORTED}")
        else:
            yield key, _equality(key, value)


def _equality(key: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        if list(value) != ["$eq"]:
            other = next((str(op) for op in value if op != "$eq"), "an empty dict")
            raise ValueError(f"filter on {key!r}: {other} is not supported; "
                             f"SectionsVectorStore filters by {_SUPPORTED}")
        value = value["$eq"]
    if not isinstance(value, SCALARS):
        raise ValueError(f"filter on {key!r}: {type(value).__name__} values are not supported; "
                         f"SectionsVectorStore filters by {_SUPPORTED}")
    return value


class SectionsVectorStore(VectorStore):
    """A LangChain ``VectorStore`` over ``SupabaseStore``: ``SectionsVectorStore(embedding,
    database_url=..., collection_name=...)`` (``connection`` may name the database instead, as a
    URL or a ``SupabaseStore`` to share). With neither: ``$DATABASE_URL``, else the embedded
    Postgres. ``model_name`` is what the vectors are stored under when ``embedding`` is not
    ``SectionsEmbeddings`` (default: its class and model, ``OpenAIEmbeddings/text-embedding-3-small``).

    The store's command line, ``sections sync``/``watch`` and ``match_sections`` RPC see the same
    rows: a document is an untitled section whose content is ``page_content``.
    """

    def __init__(self, embedding: Embeddings, database_url: str | None = None, *,
                 connection: str | SupabaseStore | None = None, collection_name: str = DEFAULT_COLLECTION,
                 model_name: str | None = None):
        self._embedding = embedding
        self._embedder = _embedder(embedding, model_name)
        self._opened = OpenedStore(database_url, connection, collection_name)

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def store(self) -> SupabaseStore:
        return self._opened.store

    @property
    def collection_name(self) -> str:
        return self._opened.collection

    @property
    def model_name(self) -> str:
        """The name this store's vectors are kept (and searched) under."""
        return self._embedder.settings.model

    def close(self) -> None:
        """Close the database pool, unless it was handed in as a ``SupabaseStore``."""
        self._opened.close()

    def __enter__(self) -> SectionsVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------

    def add_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Store ``texts`` (new ids where none is given) and embed the new and changed ones; an
        unchanged text is not embedded again. ``batch_size``: texts read and stored per round trip.
        Raises ``NotStored`` (a ``RuntimeError``) when some text could not be embedded: it is stored,
        and the next add (or ``sections sync``) embeds it."""
        sections = as_sections(list(texts), metadatas, ids)
        ingest_all(self._opened, sections, self._embedder, kwargs.get("batch_size"))
        return [section.id for section in sections]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete these documents of the collection (ids it does not hold are ignored); ``True``.
        To empty the whole collection: ``delete_collection()``."""
        if ids is None:
            raise ValueError("delete takes the ids to delete; delete_collection() empties the collection")
        self.store.delete(Selection(self.collection_name, ids=tuple(ids)))
        return True

    def delete_collection(self) -> None:
        """Delete every document of this collection, with its vectors."""
        self.store.delete(Selection(self.collection_name, everything=True))

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict[str, Any]] | None = None, *,
                   ids: list[str] | None = None, **kwargs: Any) -> SectionsVectorStore:
        """A store (``kwargs``: the constructor's) holding ``texts``."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    # -- reading --------------------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents of the collection with these ids (missing ones left out), in id order."""
        return [Document(id=row["id"], page_content=section_text(row["title"], row["content"]),
                         metadata=_metadata(row["metadata"]))
                for row in self.store.find_sections(ids, collection=self.collection_name)]

    def similarity_search(self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None,
                          **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """The ``k`` nearest documents to ``query`` with their cosine distance (lower is nearer)."""
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                    filter: Mapping[str, Any] | None = None, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: Mapping[str, Any] | None = None) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest to ``embedding`` among this store's model's vectors of its
        dimension, with their cosine distance; the model's HNSW index when it has one."""
        where = langchain_filter(filter)
        if where is None:
            return []
        hits = self.store.search_by_vector(embedding, self.model_name, k, group=False, collection=self.collection_name,
                                           filter=where, full=True)
        return [(Document(id=hit["id"], page_content=section_text(hit["title"], hit.get("content", "")),
                          metadata=_metadata(hit["metadata"])), 1.0 - hit["score"]) for hit in hits]

    def _select_relevance_score_fn(self) -> Any:
        return self._cosine_relevance_score_fn


def _embedder(embedding: Embeddings, model_name: str | None) -> Embedder:
    """Ours: the engine itself (its settings fingerprint the vectors, as the command line's do);
    any other: its ``embed_documents`` in batches, under ``model_name``."""
    if isinstance(embedding, SectionsEmbeddings):
        if model_name is not None and model_name != embedding.model:
            raise ValueError(f"model_name {model_name!r} differs from the embedding's model {embedding.model!r}")
        return embedding.service
    if not isinstance(embedding, Embeddings):
        raise ValueError(f"embedding must be a LangChain Embeddings, not {type(embedding).__name__}")
    return FrameworkEmbedder(model_name or foreign_model_name(embedding), embedding.embed_documents)


def _metadata(stored: Any) -> dict[str, Any]:
    return dict(stored) if isinstance(stored, Mapping) else {} if stored is None else {"metadata": stored}
