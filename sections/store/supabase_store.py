"""SupabaseStore: sections and their embeddings in Postgres/pgvector (Supabase is Postgres).

The seed's face over the stages: ``sections.pipeline`` runs ingest and sync over a backend,
``sections.postgres`` holds the SQL (sections, vectors, claims, index, search, status) and the
connection. This class keeps the public names and return shapes; its bases hold the lifecycle
operations (``sections.store.lifecycle``) and the indexes and the policy of when they are built
(``sections.store.indexing``). It holds no SQL of its own.

Connection: ``SupabaseStore(database_url)``; with none, ``$DATABASE_URL``; with neither, the
embedded Postgres in the user's data directory. A Supabase connection string works as is, the
transaction pooler (port 6543) included: prepared statements are off by default and temporary
tables live only inside one transaction's use.

Text rules: Postgres ``text``/``jsonb`` cannot hold U+0000, and Python strings can hold lone
surrogates that are not UTF-8. Such a section is invalid (``sections.records.section_problem``):
``upsert_sections`` raises ``ValueError``; ``ingest`` counts it as failed with the reason and goes
on. Everything else (quotes, SQL, any Unicode, megabytes) is stored verbatim.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

import numpy as np
import psycopg

from sections.fingerprint import content_hash, section_text
from sections.pipeline.ingest import (DEFAULT_CHUNK, DEFAULT_WRITE_BATCH, IngestOptions, chunked, dedupe, ingest,
                                  valid_sections)
from sections.pipeline.sync import sync
from sections.pipeline.tally import ProgressCallback
from sections.postgres import index_build
from sections.postgres import sections as pg_sections
from sections.postgres import status as pg_status
from sections.postgres import vectors
from sections.postgres.backend import PostgresBackend
from sections.postgres.database import Database
from sections.postgres.index import index_name
from sections.records import (DEFAULT_COLLECTION, Embedder, EmbeddingSettings, FailureRow, IngestSummary, Rejected,
                          Selection, VectorRow)
from sections.store.indexing import Indexing
from sections.store.lifecycle import Lifecycle, check_collection, check_model
from sections.store.batches import BatchStore
from sections.store.searching import Searching
from sections.engine.tokens import LongInputPolicy

__all__ = ["SupabaseStore", "section_text", "content_hash", "index_name", "LONG_INPUT_DEFAULT"]

LONG_INPUT_DEFAULT = LongInputPolicy.AVERAGE.value


class SupabaseStore(Lifecycle, Indexing, BatchStore, Searching):
    """Sections, embeddings and failures in Postgres/pgvector; bulk writes; search."""

    DEFAULT_CHUNK = DEFAULT_CHUNK
    DEFAULT_WRITE_BATCH = DEFAULT_WRITE_BATCH
    AUTO_INDEX_MIN_ROWS = 10_000

    def __init__(
        self,
        database_url: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        min_size: int = 1,
        max_size: int = 4,
        migrate: bool = True,
        prepare_threshold: int | None = None,
        auto_index_min_rows: int = AUTO_INDEX_MIN_ROWS,
        max_index_memory: str = "2GB",
        connect_timeout: float = 30.0,
    ):
        """Connect (``database_url``, else ``$DATABASE_URL``, else the embedded Postgres in ``data_dir``).

        ``max_index_memory`` (``2GB``, ``512MB``): the most ``maintenance_work_mem`` an index build
        asks for (``sections.postgres.index_build`` says how it is chosen).

        ``prepare_threshold=None`` keeps psycopg from preparing statements, which the Supabase
        transaction pooler (PgBouncer/Supavisor, port 6543) cannot keep across transactions.
        """
        if max_size < 2:
            raise ValueError("max_size must be at least 2 (ingest reads and writes at once)")
        index_build.parse_kb(max_index_memory)  # a bad value fails here, not after a long ingest
        self.auto_index_min_rows = auto_index_min_rows
        self.max_index_memory = max_index_memory
        self.database = Database(database_url, data_dir=data_dir, min_size=min_size, max_size=max_size,
                                 migrate=migrate, prepare_threshold=prepare_threshold, connect_timeout=connect_timeout)
        self.url_masked = self.database.url_masked
        self.backend = PostgresBackend(self.database)

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> SupabaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SupabaseStore({self.url_masked!r})"

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A pooled connection (autocommit; use ``conn.transaction()``), as a context manager."""
        return self.database.connection()

    # -- sections -----------------------------------------------------------------------------------

    def upsert_sections(self, sections: Iterable[Any], *, chunk_size: int = 5000,
                        collection: str = DEFAULT_COLLECTION) -> int:
        """Insert or update sections (dicts or objects with id/title/content/metadata) in bulk.

        A missing ``metadata`` keeps what is stored; ``updated_at`` moves only when something
        changed. Raises ValueError (before writing that chunk) for a section that cannot be stored
        or whose id another collection holds. Returns the number of rows inserted or changed.
        """
        check_collection(collection)
        total = 0
        for chunk in chunked(sections, chunk_size):
            rejected: list[Rejected] = []
            rows = dedupe(valid_sections(chunk, rejected))
            if rejected:
                raise ValueError(f"section {rejected[0].section_id!r}: {rejected[0].reason}")
            if rows and (foreign := self.backend.foreign_sections([row.id for row in rows], collection)):
                section_id, other = next(iter(foreign.items()))
                raise ValueError(f"section {section_id!r} is stored in collection {other!r}")
            total += self.backend.upsert_sections(rows, collection) if rows else 0
        return total

    def get_section(self, section_id: str) -> pg_sections.StoredSection | None:
        with self.connection() as conn:
            return pg_sections.get_section(conn, section_id)

    def delete_sections(self, section_ids: Iterable[str]) -> int:
        with self.connection() as conn:
            return pg_sections.delete_sections(conn, list(section_ids))

    # -- vectors, written directly ------------------------------------------------------------------

    def write_embeddings(self, model_name: str, rows: Iterable[Sequence[Any]], *,
                         requested_dimensions: int | None = None, long_input: str | None = None,
                         batch_size: int = 5000) -> int:
        """Store vectors you already have: rows are ``(section_id, vector[, token_count[, content_hash]])``.

        The sections must exist. One transaction per ``batch_size`` rows; returns rows written.
        Raises ValueError for a vector pgvector cannot store (NaN, infinity, 0 or > 16000 dims).
        """
        check_model(model_name)
        settings = EmbeddingSettings(model_name, requested_dimensions,
                                     None if long_input is None else LongInputPolicy.parse(long_input))
        total = 0
        for chunk in chunked(rows, batch_size):
            batch = [_vector_row(row) for row in chunk]
            with self.connection() as conn, conn.transaction():
                result = vectors.write_embeddings(conn, settings, batch)
                if result.rejected:
                    raise ValueError(f"section {result.rejected[0].section_id!r}: {result.rejected[0].reason}")
                if result.missing:
                    raise ValueError(f"{len(result.missing)} section(s) do not exist, e.g. {result.missing[0]!r}")
            total += result.written
        return total

    def record_failures(self, model_name: str, failures: Mapping[str, str] | Iterable[tuple[str, str]]) -> int:
        """Upsert failures ({section id: reason}); attempts go up by one each time."""
        check_model(model_name)
        items = failures.items() if isinstance(failures, Mapping) else failures
        with self.connection() as conn, conn.transaction():
            return vectors.write_failures(conn, model_name, [FailureRow(i, r) for i, r in items])

    def stored_hashes(self, model_name: str, section_ids: Sequence[str]) -> dict[str, bytes]:
        """The content hash stored with each of these sections' vectors for ``model_name``."""
        return self.backend.stored_hashes(model_name, section_ids)

    def get_embedding(self, section_id: str, model_name: str) -> np.ndarray | None:
        with self.connection() as conn:
            return vectors.read_embedding(conn, section_id, model_name)

    # -- ingest and sync ----------------------------------------------------------------------------

    def ingest(self, sections: Iterable[Any], embedding_service: Embedder, *, chunk_size: int = DEFAULT_CHUNK,
               write_batch: int = DEFAULT_WRITE_BATCH, queue_size: int | None = None, flush_interval: float = 0.25,
               build_index: bool | None = None, on_progress: ProgressCallback | None = None,
               collection: str = DEFAULT_COLLECTION, prune: Selection | None = None,
               on_index_progress: index_build.ProgressCallback | None = None) -> IngestSummary:
        """Store ``sections`` in ``collection`` and embed the ones whose vector is missing or out of date.

        Streams (``sections.pipeline.ingest`` says how and why). Returns ``success_count``,
        ``failed_count``, ``total_tokens`` (billed during the run), ``failed_ids``,
        ``skipped_count``, ``errors`` ({section id: reason}), and ``busy_count`` when sections
        were left to another run embedding them. A blank or unstorable section is a failure with
        its reason, recorded until it succeeds. A stop (``ProviderFatalError``, a database error,
        KeyboardInterrupt) writes what arrived and re-raises with the partial summary as
        ``error.result``. ``prune`` (files and folders): afterwards delete the sections read from
        there before that this run did not read; ``pruned_count`` says how many.

        ``build_index``: afterwards, True builds each missing HNSW index of the model, None
        (default) each missing one of a dimension with ``auto_index_min_rows`` vectors or more (so
        a rerun that embeds nothing still builds what an earlier run failed to); both drop indexes
        left invalid and those of dimensions the model no longer stores. False: no index work. A
        failed build does not fail the run (every vector is stored; search is exact until an index
        exists): its one-line reason is ``index_error`` in the summary. ``on_progress`` gets
        ``ProgressCounts`` (success, failed, skipped, pending, tokens billed), from the writer
        thread too; ``on_index_progress`` gets ``IndexProgress`` while an index builds.
        """
        settings = embedding_service.settings
        check_model(settings.model)
        options = IngestOptions(chunk_size, write_batch, queue_size, flush_interval, collection, prune)
        run = ingest(self.backend, sections, embedding_service, options, on_progress)
        if build_index is not False:
            self._index_after_ingest(settings.model, build_index, run.summary, on_index_progress)
        if run.pruned is not None and run.pruned.deleted is not None:
            run.summary["pruned_count"] = run.pruned.deleted.sections
        return run.summary

    def batch_ingest_embeddings(self, sections: list[dict[str, Any]], embedding_service: Embedder,
                                batch_size: int = 2048) -> IngestSummary:
        """The seed's API: embed and store many sections; see ``ingest``.

        ``batch_size`` is the number of sections read, upserted and hash-checked per round trip
        (the engine packs its own requests within the provider's limits).
        """
        if not sections:
            return IngestSummary(success_count=0, failed_count=0, total_tokens=0, failed_ids=[],
                                 skipped_count=0, errors={})
        return self.ingest(sections, embedding_service, chunk_size=max(1, int(batch_size)))

    def ingest_embeddings(self, section: Any, embedding_service: Embedder) -> IngestSummary:
        """Embed and store one section; returns the same summary as ``ingest``."""
        return self.ingest([section], embedding_service, build_index=False)

    def sync(self, embedding_service: Embedder, *, claim_batch: int = 500, limit: int | None = None,
             on_progress: ProgressCallback | None = None, collection: str | None = DEFAULT_COLLECTION) -> IngestSummary:
        """Embed every section of ``collection`` (None: all) whose vector for the service's model is
        missing or stale; safe in many processes at once (``sections.pipeline.sync``). ``limit`` caps
        the sections claimed. Returns the ``ingest`` summary; a stop re-raises with ``error.result``.
        """
        check_model(embedding_service.settings.model)
        return sync(self.backend, embedding_service, claim_batch=claim_batch, limit=limit,
                    on_progress=on_progress, collection=collection).summary

    # -- status -------------------------------------------------------------------------------------

    def status(self, model_name: str | None = None, *, top_reasons: int = 5,
               collection: str | None = None) -> dict[str, pg_status.ModelStatus]:
        """Per model: ``{model: {sections, embedded, current, stale, missing, failed, dimensions,
        indexed, missing_indexes, top_failure_reasons: [(reason, count)], collections: {name:
        counts}}}`` over ``collection`` (None: all). ``stale``: vectors whose section changed since
        (in SQL); ``missing``: sections with no vector for the model; ``indexed``: {dimensions:
        has a valid index}; ``missing_indexes``: dimensions with ``auto_index_min_rows`` vectors or
        more and no valid index (their searches read every vector). With ``model_name``, only that
        model (present even with nothing stored)."""
        with self.connection() as conn:
            return pg_status.status(conn, model_name, top_reasons, collection, self.auto_index_min_rows)


def _vector_row(row: Sequence[Any]) -> VectorRow:
    """A caller's ``(id, vector[, tokens[, hash]])`` as a row; a full, well-typed tuple is one already
    (the writer reads rows by position), which spares a copy per row on bulk loads."""
    if len(row) == 4 and type(row[0]) is str and type(row[2]) is int:
        return cast(VectorRow, row)
    return VectorRow(str(row[0]), row[1], int(row[2]) if len(row) > 2 and row[2] is not None else 0,
                     row[3] if len(row) > 3 else None)
