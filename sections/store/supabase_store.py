"""SupabaseStore: sections and their embeddings in Postgres/pgvector (Supabase is Postgres).

The face a library user holds. It opens the database and composes the parts it hands work to, each
given what it needs in its constructor: ``writes`` (sections and vectors written directly),
``lifecycle`` (collections, delete, drop a model, watch, the shared budget), ``indexes`` (HNSW
indexes and the ingest's index policy), ``batches`` (the Batch API) and ``searches``. Ingest and sync
run ``sections.pipeline`` over the Postgres backend; ``sections.postgres`` holds every statement.
The face keeps the seed's public names and return shapes: each of its methods is a part's, or a
pipeline run.

Connection: ``SupabaseStore(database_url)``; with none, ``$DATABASE_URL``; with neither, the
embedded Postgres in the user's data directory. A Supabase connection string works as is, the
transaction pooler (port 6543) included: prepared statements are off by default and temporary
tables live only inside one transaction's use.

Text rules: Postgres ``text``/``jsonb`` cannot hold U+0000, and Python strings can hold lone
surrogates that are not UTF-8. Such a section is invalid (``records.section_problem``):
``upsert_sections`` raises ``ValueError``; ``ingest`` counts it as failed with the reason and goes
on. Everything else (quotes, SQL, any Unicode, megabytes) is stored verbatim.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import psycopg

from sections.engine.tokens import LongInputPolicy
from sections.pipeline.ingest import DEFAULT_CHUNK, DEFAULT_WRITE_BATCH, IngestOptions, ingest
from sections.pipeline.stream import Keeping
from sections.pipeline.sync import SyncOptions, sync
from sections.pipeline.tally import ProgressCallback
from sections.postgres import index_build
from sections.postgres import sections as pg_sections
from sections.postgres import status as pg_status
from sections.postgres import vectors
from sections.postgres.backend import PostgresBackend, PostgresJobs
from sections.postgres.database import Database
from sections.records import DEFAULT_COLLECTION, Embedder, IngestSummary, SearchFilter, Selection
from sections.store.batches import Batches
from sections.store.delegation import DelegatedTo
from sections.store.indexing import Indexes
from sections.store.lifecycle import Lifecycle, check_collection, check_model
from sections.store.searching import Searches
from sections.store.writes import Writes

__all__ = ["SupabaseStore", "LONG_INPUT_DEFAULT"]

LONG_INPUT_DEFAULT = LongInputPolicy.AVERAGE.value


class SupabaseStore:
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
        asks for (``postgres.index_build`` says how it is chosen).

        ``prepare_threshold=None`` keeps psycopg from preparing statements, which the Supabase
        transaction pooler (PgBouncer/Supavisor, port 6543) cannot keep across transactions.
        """
        if max_size < 2:
            raise ValueError("max_size must be at least 2 (ingest reads and writes at once)")
        # first, so a bad max_index_memory fails before a database opens
        self.indexes = Indexes(self.connection, auto_index_min_rows, max_index_memory)
        self.database = Database(database_url, data_dir=data_dir, min_size=min_size, max_size=max_size,
                                 migrate=migrate, prepare_threshold=prepare_threshold, connect_timeout=connect_timeout)
        self.url_masked = self.database.url_masked
        self.backend = PostgresBackend(self.database)
        self.jobs = PostgresJobs(self.backend)
        self.writes = Writes(self.database, self.backend)
        self.lifecycle = Lifecycle(self.database, self.backend, self.jobs)
        self.batches = Batches(self.backend, self.jobs, self.indexes)
        self.searches = Searches(self.database.connection)

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

    @property
    def auto_index_min_rows(self) -> int:
        """Vectors of one dimension after which an ingest builds its missing index (the indexes' policy)."""
        return self.indexes.auto_index_min_rows

    @auto_index_min_rows.setter
    def auto_index_min_rows(self, rows: int) -> None:
        self.indexes.auto_index_min_rows = rows

    # -- sections and vectors, read directly -------------------------------------------------------

    def get_section(self, section_id: str) -> pg_sections.StoredSection | None:
        with self.connection() as conn:
            return pg_sections.get_section(conn, section_id)

    def find_sections(self, ids: Iterable[str] | None = None, *, collection: str = DEFAULT_COLLECTION,
                      metadata: Mapping[str, Any] | None = None) -> list[pg_sections.StoredSection]:
        """The sections of ``collection`` with one of ``ids`` (None: any) whose metadata contains
        ``metadata`` (None: any), in id order; ids that are not there are left out."""
        check_collection(collection)
        if metadata is not None and (problem := SearchFilter(metadata=metadata).problem()):
            raise ValueError(problem)
        wanted = None if ids is None else list(ids)
        if wanted is not None and not wanted:
            return []
        with self.connection() as conn:
            return pg_sections.find_sections(conn, collection, wanted, metadata)

    def delete_sections(self, section_ids: Iterable[str]) -> int:
        with self.connection() as conn:
            return pg_sections.delete_sections(conn, list(section_ids))

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
               on_index_progress: index_build.ProgressCallback | None = None,
               keeping: Keeping | None = None, wait_for_others: bool = True) -> IngestSummary:
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

        ``keeping``: how long the run waits out a database that is away (sending held meanwhile;
        default two minutes) and where it spools what was answered if it does not come back
        (``sections.pipeline.stream.Keeping``); ``from_spool`` in the summary counts the answers
        an earlier run spooled, written first. Sections another run is embedding are waited for
        (and taken over if that run dies); ``wait_for_others`` False leaves them, in ``busy_count``.
        """
        settings = embedding_service.settings
        check_model(settings.model)
        options = IngestOptions(chunk_size, write_batch, queue_size, flush_interval, collection, prune,
                                wait_for_others=wait_for_others, keeping=keeping or Keeping())
        run = ingest(self.backend, sections, embedding_service, options, on_progress)
        if run.from_spool:
            run.summary["from_spool"] = run.from_spool
        if build_index is not False:
            self.indexes.after_ingest(settings.model, build_index, run.summary, on_index_progress)
        if run.pruned is not None and run.pruned.deleted is not None:
            run.summary["pruned_count"] = run.pruned.deleted.sections
            run.summary["pruned_ids"] = run.pruned.ids
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
             on_progress: ProgressCallback | None = None, collection: str | None = DEFAULT_COLLECTION,
             keeping: Keeping | None = None) -> IngestSummary:
        """Embed every section of ``collection`` (None: all) whose vector for the service's model is
        missing or stale; safe in many processes at once (``sections.pipeline.sync``). ``limit`` caps
        the sections claimed. Returns the ``ingest`` summary; a stop re-raises with ``error.result``.
        ``keeping`` as for ``ingest``.
        """
        check_model(embedding_service.settings.model)
        run = sync(self.backend, embedding_service, claim_batch=claim_batch, limit=limit, on_progress=on_progress,
                   collection=collection, options=SyncOptions(keeping=keeping or Keeping()))
        if run.from_spool:
            run.summary["from_spool"] = run.from_spool
        return run.summary

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
            return pg_status.status(conn, model_name, top_reasons, collection, self.indexes.auto_index_min_rows)

    # -- the parts' own operations, each handed to the part that does it -----------------------------

    upsert_sections = DelegatedTo("writes", Writes.upsert_sections)
    write_embeddings = DelegatedTo("writes", Writes.write_embeddings)
    record_failures = DelegatedTo("writes", Writes.record_failures)

    delete = DelegatedTo("lifecycle", Lifecycle.delete)
    selected_ids = DelegatedTo("lifecycle", Lifecycle.selected_ids)
    sources_named = DelegatedTo("lifecycle", Lifecycle.sources_named)
    other_files = DelegatedTo("lifecycle", Lifecycle.other_files)
    collections = DelegatedTo("lifecycle", Lifecycle.collections)
    workers = DelegatedTo("lifecycle", Lifecycle.workers)
    drop_model = DelegatedTo("lifecycle", Lifecycle.drop_model)
    due_sections = DelegatedTo("lifecycle", Lifecycle.due_sections)
    change_feed = DelegatedTo("lifecycle", Lifecycle.change_feed)
    watch = DelegatedTo("lifecycle", Lifecycle.watch)
    share_budget = DelegatedTo("lifecycle", Lifecycle.share_budget)

    build_index = DelegatedTo("indexes", Indexes.build_index)
    update_indexes = DelegatedTo("indexes", Indexes.update_indexes)
    has_index = DelegatedTo("indexes", Indexes.has_index)

    batch_ingest = DelegatedTo("batches", Batches.batch_ingest)
    batch_sync = DelegatedTo("batches", Batches.batch_sync)
    collect_batches = DelegatedTo("batches", Batches.collect_batches)
    batch_jobs = DelegatedTo("batches", Batches.batch_jobs)
    cancel_batch = DelegatedTo("batches", Batches.cancel_batch)

    search_by_vector = DelegatedTo("searches", Searches.search_by_vector)
    search = DelegatedTo("searches", Searches.search)
    match_sections = DelegatedTo("searches", Searches.match_sections)
