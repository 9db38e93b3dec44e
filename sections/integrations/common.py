"""What the LangChain and LlamaIndex integrations share, free of either framework.

Both frameworks hand a store texts with ids and metadata and expect them searchable, and both let
a user bring an embedding model we did not build. Here: opening the store either way a framework
user names it, the store's ``Embedder`` over a foreign embedding function, turning a framework's
records into ``Section``s (refused before anything is written when the store could not hold one),
and an ingest that raises when any text was not stored (a framework call has no partial result).
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np

from sections.engine.service import EmbeddingService
from sections.redact import mask_secrets
from sections.records import (Embedder, EmbeddingOutcome, EmbeddingSettings, IngestSummary, Section, collection_problem,
                              section_problem)
from sections.store.supabase_store import SupabaseStore

__all__ = ["FrameworkEmbedder", "NotStored", "OpenedStore", "as_sections", "embed_texts", "foreign_model_name",
           "ingest_all"]

FOREIGN_BATCH = 256  # texts per call of a foreign embedding function (it packs its own requests, or not)


class OpenedStore:
    """The store and collection a framework object works on: ``database_url`` or ``connection`` (a
    URL, or a ``SupabaseStore`` to share); neither: as ``SupabaseStore()`` chooses
    (``$DATABASE_URL``, else the embedded Postgres). A store the user handed in is theirs to close;
    one opened here is closed with the object."""

    def __init__(self, database_url: str | None, connection: str | SupabaseStore | None, collection: str):
        if database_url is not None and connection is not None:
            raise ValueError("give database_url or connection, not both")
        if problem := collection_problem(collection):
            raise ValueError(problem)
        self.collection = collection
        self.owned = not isinstance(connection, SupabaseStore)
        self.store = connection if isinstance(connection, SupabaseStore) else SupabaseStore(database_url or connection)

    def close(self) -> None:
        if self.owned:
            self.store.close()


class FrameworkEmbedder:
    """The store's ``Embedder`` over a framework's embedding function that is not ours.

    The store asks it for vectors of the texts that are due (new or changed), so unchanged texts
    are skipped with any model. Its vectors are stored as given (no long-input policy of ours), under
    ``model_name``: the store keeps any dimension per model name, so a name says which function
    made a vector, and a search compares only vectors of its query's model and dimension. Tokens
    are the function's business: it reports none. A call that raises fails the texts it was given,
    with the reason, and the next batch is tried.
    """

    def __init__(self, model_name: str, embed: Callable[[list[str]], list[list[float]]],
                 batch_size: int = FOREIGN_BATCH):
        if not model_name:
            raise ValueError("model_name must be a non-empty string")
        self._settings = EmbeddingSettings(model_name, None, None)
        self._embed = embed
        self._batch_size = batch_size

    @property
    def settings(self) -> EmbeddingSettings:
        return self._settings

    @property
    def total_tokens(self) -> int:
        return 0

    def stream_embeddings(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[EmbeddingOutcome]:
        pending = iter(items)
        while batch := list(islice(pending, self._batch_size)):
            try:
                vectors = self._embed([text for _, text in batch])
                if len(vectors) != len(batch):
                    raise RuntimeError(f"the embedding function returned {len(vectors)} vectors for {len(batch)} texts")
            except Exception as error:  # a foreign function's failure is the batch's, reported per text
                reason = mask_secrets(f"{type(error).__name__}: {error}")  # stored, and shown: no key in it
                yield from (EmbeddingOutcome(key, None, 0, reason) for key, _ in batch)
                continue
            for (key, _), vector in zip(batch, vectors):
                yield EmbeddingOutcome(key, np.asarray(vector, dtype=np.float32), 0)

    def generate_embedding(self, text: str) -> list[float]:
        return list(self._embed([text])[0])


def foreign_model_name(embedding: object) -> str:
    """The name vectors of a foreign embedding object are stored under: its class, and its model
    when it names one (``OpenAIEmbeddings/text-embedding-3-small``)."""
    name = type(embedding).__name__
    model = getattr(embedding, "model", None) or getattr(embedding, "model_name", None)
    return f"{name}/{model}" if isinstance(model, str) and model else name


def embed_texts(service: EmbeddingService, texts: Sequence[str]) -> list[list[float]]:
    """Every text's vector, in order, or an error: a framework's embed call has no partial result.

    The engine packs the texts into requests by tokens, sends them in parallel under one rate
    limiter and matches each reply by its index; identical texts are sent once.
    """
    if not texts:
        return []
    result = service.batch_generate_embeddings(list(texts))
    if result["failed_indices"]:
        first = result["failed_indices"][0]
        raise RuntimeError(f"{len(result['failed_indices'])} of {len(texts)} texts were not embedded; "
                           f"text {first}: {result['errors'][first]}")
    return result["embeddings"]


def as_sections(texts: Sequence[str], metadatas: Sequence[Mapping[str, Any] | None] | None,
                ids: Sequence[str | None] | None) -> list[Section]:
    """A framework's texts as untitled sections (the text is what is embedded), a new id for each
    text that has none; ValueError before anything is written when one cannot be stored."""
    if metadatas is not None and len(metadatas) != len(texts):
        raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"got {len(ids)} ids for {len(texts)} texts")
    sections = []
    for i, text in enumerate(texts):
        section_id = ids[i] if ids is not None and ids[i] is not None else str(uuid.uuid4())
        metadata = dict(metadatas[i] or {}) if metadatas is not None else {}
        if not isinstance(section_id, str) or not isinstance(text, str):
            raise ValueError(f"text {i}: ids and texts must be strings")
        section = Section(section_id, "", text, metadata)
        if problem := section_problem(section):
            raise ValueError(f"text {i} ({section_id!r}): {problem}")
        sections.append(section)
    return sections


class NotStored(RuntimeError):
    """Some texts were stored without a vector (they are due: the next add, or ``sections sync``,
    embeds them); ``summary`` says which and why."""

    def __init__(self, summary: IngestSummary):
        first = summary["failed_ids"][0]
        super().__init__(f"{summary['failed_count']} text(s) were not embedded; {first!r}: "
                         f"{summary['errors'].get(first, 'failed')}")
        self.summary = summary


def ingest_all(opened: OpenedStore, sections: list[Section], embedder: Embedder,
               chunk_size: int | None = None) -> IngestSummary:
    """Store ``sections`` in the collection and embed the ones new or changed since they were
    stored (the rest are skipped); ``NotStored`` when any was not embedded."""
    if not sections:
        return IngestSummary(success_count=0, failed_count=0, total_tokens=0, failed_ids=[], skipped_count=0, errors={})
    chunk = SupabaseStore.DEFAULT_CHUNK if chunk_size is None else max(1, int(chunk_size))
    summary = opened.store.ingest(sections, embedder, collection=opened.collection, chunk_size=chunk)
    if summary["failed_count"]:
        raise NotStored(summary)
    return summary
