"""The store's Batch API operations: ingest and sync at half the price, and the jobs' own listing,
collecting and cancelling.

A part ``SupabaseStore`` holds (``store.batches``) and hands this work to; it is given the pipeline's
backend, the job store and the index policy. ``pipeline.batch`` says how a run resumes, waits and retries.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sections.batch.records import BatchCapable, BatchLimits, BatchProgressCallback, BatchState, BatchSummary, JobRecord
from sections.store.lifecycle import check_collection, check_model
from sections.pipeline.batch import BatchOptions, BatchResult, batch_ingest, batch_sync, cancel_job, collect_jobs
from sections.pipeline.ingest import DEFAULT_CHUNK, IngestOptions
from sections.postgres.backend import PostgresBackend, PostgresJobs
from sections.records import DEFAULT_COLLECTION, Selection
from sections.store.indexing import Indexes

__all__ = ["BatchOptions", "Batches"]


class Batches:
    def __init__(self, backend: PostgresBackend, jobs: PostgresJobs, indexes: Indexes):
        self.backend = backend
        self.jobs = jobs
        self.indexes = indexes

    def _finish(self, service: BatchCapable, result: BatchResult, build_index: bool | None) -> BatchSummary:
        if build_index is not False:
            self.indexes.after_ingest(service.settings.model, build_index, result.summary, None)
        if result.pruned is not None and result.pruned.deleted is not None:
            result.summary["pruned_count"] = result.pruned.deleted.sections
            result.summary["pruned_ids"] = result.pruned.ids
        return result.summary

    def batch_ingest(self, sections: Iterable[Any], embedding_service: BatchCapable, *,
                     options: BatchOptions = BatchOptions(), limits: BatchLimits | None = None,
                     collection: str = DEFAULT_COLLECTION, prune: Selection | None = None,
                     chunk_size: int = DEFAULT_CHUNK, build_index: bool | None = None,
                     on_progress: BatchProgressCallback | None = None) -> BatchSummary:
        """``ingest`` through the Batch API: store ``sections`` in ``collection``, submit the due ones
        not covered by a live job in files within ``limits`` (OpenAI's by default), each job recorded
        before it runs, and (``options.wait``) wait until every job of the service is collected.
        Returns the ingest summary and the jobs' counts (``sections.batch.records.BatchSummary``); a
        stop re-raises with it as ``error.result``, the jobs left running and recorded."""
        check_model(embedding_service.settings.model)
        ingest_options = IngestOptions(chunk_size=chunk_size, collection=collection, prune=prune)
        result = batch_ingest(self.backend, self.jobs, sections, embedding_service, embedding_service.batch_api(limits),
                              options, ingest_options, on_progress)
        return self._finish(embedding_service, result, build_index)

    def batch_sync(self, embedding_service: BatchCapable, *, options: BatchOptions = BatchOptions(),
                   limits: BatchLimits | None = None, collection: str | None = DEFAULT_COLLECTION,
                   build_index: bool | None = None, on_progress: BatchProgressCallback | None = None) -> BatchSummary:
        """``sync`` through the Batch API: the stored sections of ``collection`` (None: all) that are due."""
        check_model(embedding_service.settings.model)
        if collection is not None:
            check_collection(collection)
        result = batch_sync(self.backend, self.jobs, embedding_service, embedding_service.batch_api(limits), options,
                            collection, on_progress)
        return self._finish(embedding_service, result, build_index)

    def collect_batches(self, embedding_service: BatchCapable, *, options: BatchOptions = BatchOptions(wait=False),
                        on_progress: BatchProgressCallback | None = None) -> BatchSummary:
        """Write what the service's finished jobs delivered (and, with ``options.wait``, wait for the rest)."""
        result = collect_jobs(self.jobs, embedding_service, embedding_service.batch_api(), options, on_progress)
        return self._finish(embedding_service, result, None)

    def batch_jobs(self, limit: int = 50, *, open_only: bool = False) -> list[JobRecord]:
        """The newest jobs (``open_only``: the ones not yet collected, oldest first)."""
        return self.jobs.open_jobs() if open_only else self.jobs.jobs(limit)

    def cancel_batch(self, key: str, embedding_service: BatchCapable) -> BatchState:
        """Cancel a job's batch (by record or batch id); collect it afterwards for what it finished."""
        return cancel_job(self.jobs, embedding_service.batch_api(), key)
