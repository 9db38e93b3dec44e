"""LlamaIndex over our engine and store (``pip install 'sections-pgvector[llama-index]'``).

``SectionsEmbedding`` is a LlamaIndex ``BaseEmbedding`` whose calls go through ``EmbeddingService``
(packed requests in parallel under one rate limiter, replies matched by index, identical texts sent
once), for any model the command line takes, the local one (the default) included.
``SectionsVectorStore`` is a ``BasePydanticVectorStore`` over ``SupabaseStore``: a node is a
section of one collection under its node id (unique across collections), its metadata the node's
(plus LlamaIndex's serialized node and ``ref_doc_id``), so ``delete(ref_doc_id)`` removes a
document's nodes and a query can filter on any metadata key.

LlamaIndex embeds a node before any store sees it, so what the store can skip is the write: a node
whose embedded text and model are unchanged since it was stored is not written again. The section
holds the text the vector was made of (``get_content(MetadataMode.EMBED)``), so its fingerprint is
true and ``sections sync``/``status`` judge it as they judge any section.

Filters (``MetadataFilters``), as far as the store's filter (metadata containment) goes: ``EQ`` on a
str or number, ``CONTAINS`` (a list field holds the value), ``ALL`` (it holds every value), joined
by ``AND`` (nested too). ``NE``, ``GT``/``LT``…, ``IN``/``NIN``, ``ANY``, ``TEXT_MATCH``, ``IS_EMPTY``,
``OR`` and ``NOT`` are refused with a ``ValueError``. Query modes: ``DEFAULT`` and ``HYBRID`` (full
text fused with the vector ranking, as ``sections search --hybrid``).
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.types import (BasePydanticVectorStore, FilterCondition, FilterOperator,
                                                  MetadataFilter, MetadataFilters, VectorStoreQuery,
                                                  VectorStoreQueryMode, VectorStoreQueryResult)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from sections.engine.service import EmbeddingService
from sections.fingerprint import fingerprint, section_text
from sections.integrations.common import OpenedStore, embed_texts, foreign_model_name
from sections.providers.local import DEFAULT_LOCAL_MODEL
from sections.records import DEFAULT_COLLECTION, EmbeddingSettings, SearchFilter, Section, Selection, section_problem
from sections.store.supabase_store import SupabaseStore

__all__ = ["SectionsEmbedding", "SectionsVectorStore", "llama_index_filter"]

MAX_BATCH = 2048  # what BaseEmbedding allows; each batch is packed into parallel requests by the engine


class SectionsEmbedding(BaseEmbedding):
    """A LlamaIndex ``BaseEmbedding`` over our engine: ``SectionsEmbedding(model=..., api_key=...,
    api_base=..., dimensions=...)``, the names ``OpenAIEmbedding`` takes (``base_url`` is the same as
    ``api_base``). Other keywords (``concurrency``, ``rpm``, ``tpm``, ``long_input``, ``timeout``,
    ``cache_size``, ``provider``) go to ``EmbeddingService``. ``embed_batch_size`` defaults to the
    most LlamaIndex allows, since LlamaIndex sends its batches one after another and the engine
    parallelises within one. The async methods run the engine in a worker thread."""

    embed_batch_size: int = Field(default=MAX_BATCH, gt=0, le=MAX_BATCH)
    base_url: str | None = Field(default=None, description="The OpenAI-compatible server, if any.")
    dimensions: int | None = Field(default=None, description="Shorter vectors (text-embedding-3 models).")
    _service: EmbeddingService = PrivateAttr()

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, *, api_key: str | None = None, api_base: str | None = None,
                 base_url: str | None = None, dimensions: int | None = None, embed_batch_size: int = MAX_BATCH,
                 callback_manager: Any = None, **options: Any):
        if api_base is not None and base_url is not None and api_base != base_url:
            raise ValueError("api_base and base_url name the same server: give one")
        service = EmbeddingService(api_key=api_key, model=model, base_url=api_base or base_url, dimensions=dimensions,
                                   **options)
        super().__init__(model_name=service.model, embed_batch_size=embed_batch_size,  # type: ignore[call-arg]
                         base_url=service.base_url, dimensions=dimensions, callback_manager=callback_manager)
        self._service = service

    @classmethod
    def class_name(cls) -> str:
        return "SectionsEmbedding"

    @property
    def service(self) -> EmbeddingService:
        return self._service

    def close(self) -> None:
        """Stop the engine's threads and its HTTP client."""
        self._service.close()

    def _get_query_embedding(self, query: str) -> list[float]:
        return embed_texts(self._service, [query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return embed_texts(self._service, [text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return embed_texts(self._service, texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


_SUPPORTED = "EQ (a str or number), CONTAINS and ALL (list fields), joined by AND"


def llama_index_filter(filters: MetadataFilters | None, doc_ids: Sequence[str] | None = None) -> SearchFilter | None:
    """LlamaIndex filters (and a query's one ``doc_ids`` entry) as the store's metadata containment,
    or None when they can match nothing (``EQ`` 1 and ``EQ`` 2 on one key); ValueError for what
    containment cannot say."""
    scalars: dict[str, Any] = {}
    lists: dict[str, list[Any]] = {}
    if doc_ids:
        if len(doc_ids) != 1:
            raise ValueError("a query's doc_ids may name one document; filter by metadata for more")
        scalars["ref_doc_id"] = doc_ids[0]
    for condition in _conditions(filters):
        if condition.operator == FilterOperator.EQ:
            if not isinstance(condition.value, (str, int, float)):
                raise ValueError(f"filter on {condition.key!r}: EQ takes a str or number; {_SUPPORTED}")
            if condition.key in scalars and scalars[condition.key] != condition.value:
                return None
            scalars[condition.key] = condition.value
        elif condition.operator in (FilterOperator.CONTAINS, FilterOperator.ALL):
            values = condition.value if isinstance(condition.value, list) else [condition.value]
            lists.setdefault(condition.key, []).extend(values)
        else:
            raise ValueError(f"filter operator {condition.operator.name} on {condition.key!r} is not supported; "
                             f"SectionsVectorStore filters by {_SUPPORTED}")
    if set(scalars) & set(lists):
        return None  # one value cannot be a scalar and a list
    return SearchFilter(metadata={**scalars, **lists})


def _conditions(filters: MetadataFilters | None) -> Iterator[MetadataFilter]:
    if filters is None:
        return
    if filters.condition not in (None, FilterCondition.AND) and len(filters.filters) > 1:
        raise ValueError(f"filter condition {filters.condition.value.upper()} is not supported; "
                         f"SectionsVectorStore filters by {_SUPPORTED}")
    if filters.condition == FilterCondition.NOT:
        raise ValueError(f"filter condition NOT is not supported; SectionsVectorStore filters by {_SUPPORTED}")
    for inner in filters.filters:
        if isinstance(inner, MetadataFilters):
            yield from _conditions(inner)
        else:
            yield inner


class SectionsVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over ``SupabaseStore``: ``SectionsVectorStore(embed_model,
    database_url=..., collection_name=...)`` (``connection`` may name the database instead, as a URL
    or a ``SupabaseStore`` to share); with neither, ``$DATABASE_URL``, else the embedded Postgres.
    ``embed_model`` says what the vectors are stored (and searched) under: ours, by its model and
    settings; another, as ``model_name`` (default: its class and model name)."""

    stores_text: bool = True
    is_embedding_query: bool = True
    collection_name: str = DEFAULT_COLLECTION
    model_name: str
    _settings: EmbeddingSettings = PrivateAttr()
    _opened: OpenedStore = PrivateAttr()

    def __init__(self, embed_model: BaseEmbedding | None = None, database_url: str | None = None, *,
                 connection: str | SupabaseStore | None = None, collection_name: str = DEFAULT_COLLECTION,
                 model_name: str | None = None):
        settings = _settings(embed_model, model_name)
        opened = OpenedStore(database_url, connection, collection_name)
        super().__init__(collection_name=collection_name, model_name=settings.model)  # type: ignore[call-arg]
        self._settings = settings
        self._opened = opened

    @classmethod
    def class_name(cls) -> str:
        return "SectionsVectorStore"

    @property
    def client(self) -> SupabaseStore:
        return self._opened.store

    def close(self) -> None:
        """Close the database pool, unless it was handed in as a ``SupabaseStore``."""
        self._opened.close()

    # -- writing --------------------------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store the nodes (embedded already, as LlamaIndex does before it calls a store); a node
        whose embedded text and model are unchanged since it was stored is not written again."""
        sections = [_section(node) for node in nodes]
        if not sections:
            return []
        vectors = {node.node_id: node.get_embedding() for node in nodes}
        store, collection = self.client, self.collection_name
        store.upsert_sections(sections, collection=collection)
        stored = store.stored_hashes(self.model_name, [s.id for s in sections])
        rows = [(s.id, vectors[s.id], 0, digest) for s in sections
                if stored.get(s.id) != (digest := fingerprint(s, self._settings))]
        store.write_embeddings(self.model_name, rows, requested_dimensions=self._settings.dimensions,
                               long_input=self._settings.long_input_name)
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id`` in the collection."""
        self._delete_ids([row["id"] for row in self.client.find_sections(
            collection=self.collection_name, metadata={"ref_doc_id": ref_doc_id})])

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        """Delete the nodes with these ids that pass ``filters`` (either may be left out, not both)."""
        if node_ids is None and filters is None:
            raise ValueError("delete_nodes takes node_ids or filters; clear() empties the collection")
        self._delete_ids([node.node_id for node in self.get_nodes(node_ids, filters)])

    def clear(self) -> None:
        """Delete every node of the collection, with its vectors."""
        self.client.delete(Selection(self.collection_name, everything=True))

    def _delete_ids(self, ids: list[str]) -> None:
        if ids:
            self.client.delete(Selection(self.collection_name, ids=tuple(ids)))

    # -- reading --------------------------------------------------------------------------------------

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        """The nodes with these ids (None: any) that pass ``filters``, in id order."""
        where = llama_index_filter(filters)
        if where is None:
            return []
        rows = self.client.find_sections(node_ids, collection=self.collection_name,
                                         metadata=dict(where.metadata) or None)
        return [_node(row["id"], row["title"], row["content"], row["metadata"]) for row in rows]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nodes nearest to the query's embedding (cosine similarity, higher
        is nearer), among this store's model's vectors of that dimension."""
        if query.query_embedding is None:
            raise ValueError("the query has no embedding (SectionsVectorStore searches by vector)")
        if query.mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.HYBRID):
            raise ValueError(f"query mode {query.mode.value} is not supported; DEFAULT and HYBRID are")
        if query.node_ids:
            raise ValueError("a query restricted to node_ids is not supported; filter by metadata")
        where = llama_index_filter(query.filters, query.doc_ids)
        if where is None:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        text = query.query_str if query.mode == VectorStoreQueryMode.HYBRID else None
        if query.mode == VectorStoreQueryMode.HYBRID and not text:
            raise ValueError("a HYBRID query needs its query_str")
        hits = self.client.search_by_vector(query.query_embedding, self.model_name, query.similarity_top_k,
                                            group=False, collection=self.collection_name, filter=where, text=text,
                                            full=True)
        nodes = [_node(hit["id"], hit["title"], hit.get("content", ""), hit["metadata"]) for hit in hits]
        return VectorStoreQueryResult(nodes=nodes, similarities=[hit["score"] for hit in hits],
                                      ids=[hit["id"] for hit in hits])

    # -- async: the same calls in a worker thread, so the event loop stays free ------------------------

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    async def adelete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                            **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    async def aget_nodes(self, node_ids: list[str] | None = None,
                         filters: MetadataFilters | None = None) -> list[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)


def _settings(embed_model: BaseEmbedding | None, model_name: str | None) -> EmbeddingSettings:
    """What this store's vectors are stored under: ours, by the engine's settings (as the command
    line stores them); another, by name only (its vectors are written as given)."""
    if isinstance(embed_model, SectionsEmbedding):
        if model_name is not None and model_name != embed_model.model_name:
            raise ValueError(f"model_name {model_name!r} differs from the embed_model's {embed_model.model_name!r}")
        return embed_model.service.settings
    if embed_model is None and model_name is None:
        raise ValueError("give embed_model (or the model_name the vectors are stored under)")
    return EmbeddingSettings(model_name or foreign_model_name(embed_model), None, None)


def _section(node: BaseNode) -> Section:
    """A node as a section: its embedded text (metadata as LlamaIndex puts it in, then the text) is
    the content, so the stored fingerprint is true; the metadata carries the whole node back."""
    if node.embedding is None:
        raise ValueError(f"node {node.node_id!r} has no embedding (LlamaIndex embeds nodes before a store adds them)")
    section = Section(node.node_id, "", node.get_content(metadata_mode=MetadataMode.EMBED),
                      node_to_metadata_dict(node, remove_text=False))
    if problem := section_problem(section):
        raise ValueError(f"node {node.node_id!r}: {problem}")
    return section


def _node(section_id: str, title: str, content: str, metadata: Any) -> BaseNode:
    """The node a section was made from; a section written otherwise (the command line, a LangChain
    store) as a ``TextNode`` of its text."""
    if isinstance(metadata, dict) and "_node_content" in metadata:
        return metadata_dict_to_node(metadata)
    return TextNode(id_=section_id, text=section_text(title, content),
                    metadata=metadata if isinstance(metadata, dict) else {})
