"""Embedding through the Batch API: ingest and sync at half the price, and the jobs' own commands.

Every run starts by looking at the jobs already recorded for its service (collecting what has
finished, settling what a dead run left unsubmitted), so a plain rerun writes whatever has
finished and resumes the rest; then it submits what is due and not covered by a live job; then,
unless told not to wait, it waits until every job of its service is collected. A stop (quota,
auth, a database error, KeyboardInterrupt) leaves the jobs recorded and running at the provider,
and re-raises with the partial summary as ``error.result``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from sections.batch.records import (BatchApiEmbedder, BatchProgressCallback, BatchState, BatchSummary, JobRecord,
                                PendingItem)
from sections.fingerprint import EMPTY_CONTENT, split_current
from sections.pipeline.backend import Backend, JobStore, JobWorker, due_pages
from sections.pipeline.batch_collect import BatchContext, BatchOptions, poll_once, wait
from sections.pipeline.batch_submit import BatchRun, submit
from sections.pipeline.ingest import IngestOptions, read_due
from sections.pipeline.stream import NOT_EMBEDDED, attach_result
from sections.pipeline.prune import Pruned, prune_unseen
from sections.records import DEFAULT_COLLECTION, Embedder, EmbeddingOutcome, FailureRow

__all__ = ["BatchOptions", "BatchResult", "batch_ingest", "batch_sync", "cancel_job", "collect_jobs"]

DUE_PAGE = 1000  # due sections listed per query by a batch sync


class BatchResult(NamedTuple):
    """A batch run's summary, the vector sizes it wrote (for the index policy), and its prune."""

    summary: BatchSummary
    dimensions: set[int]
    pruned: Pruned | None = None


def _context(worker: JobWorker, store: JobStore, batch: BatchApiEmbedder, embedder: Embedder,
             options: BatchOptions, on_progress: BatchProgressCallback | None) -> BatchContext:
    return BatchContext(worker, store, batch, embedder, BatchRun(on_progress=on_progress), options)


def _write_failures(backend: Backend, context: BatchContext, failures: list[FailureRow]) -> None:
    """Sections that cannot be sent at all (blank, too long under ``fail``): failures, as ingest records them."""
    if failures:
        result = backend.write_batch(context.settings, [], failures)
        context.run.tally.add_batch([], failures, result)


def _refused(outcomes: list[EmbeddingOutcome]) -> list[FailureRow]:
    rows = []
    for outcome in outcomes:
        assert isinstance(outcome.key, PendingItem)  # what the planner is given
        rows.append(FailureRow(outcome.key.section_id, outcome.error or NOT_EMBEDDED))
    return rows


def _run(context: BatchContext, due: Iterable[tuple[PendingItem, str]], backend: Backend,
         collection: str | None) -> BatchResult:
    """Resume what is recorded, submit ``due``, wait if asked; the summary (attached to any stop)."""
    try:
        poll_once(context)
        submit(context.worker, context.store, context.batch, due, context.run, collection,
               lambda outcomes: _write_failures(backend, context, _refused(outcomes)))
        if context.options.wait:
            wait(context)
        else:
            context.run.report("submitted", context.store.open_jobs(context.settings, context.batch.endpoint))
    except BaseException as error:
        attach_result(error, context.run.summary(_open(context)))
        raise
    return _result(context)


def _result(context: BatchContext) -> BatchResult:
    return BatchResult(context.run.summary(_open(context)), set(context.run.tally.dimensions))


def _open(context: BatchContext) -> list[JobRecord]:
    try:
        return context.store.open_jobs(context.settings, context.batch.endpoint)
    except Exception:  # the database is what stopped the run: the summary goes without these counts
        return []


def batch_ingest(backend: Backend, store: JobStore, sections: Iterable[Any], embedder: Embedder,
                 batch: BatchApiEmbedder, options: BatchOptions, ingest_options: IngestOptions,
                 on_progress: BatchProgressCallback | None = None) -> BatchResult:
    """Store ``sections`` as ingest does and embed the due ones through the Batch API."""
    with store.worker("ingest --batch-api") as worker:
        context = _context(worker, store, batch, embedder, options, on_progress)
        blanks: list[FailureRow] = []
        seen: set[str] = set()
        due = ((PendingItem(item.section.id, item.digest), item.text)
               for item in read_due(backend, worker, sections, batch.settings, ingest_options, context.run.tally,
                                    blanks.append, seen))
        result = _run(context, _then(due, lambda: _write_failures(backend, context, blanks)), backend,
                      ingest_options.collection)
    if ingest_options.prune is not None:
        result = result._replace(pruned=prune_unseen(backend, ingest_options.prune, seen,
                                                     dry_run=ingest_options.dry_run_prune))
    return result


def _then(items: Iterable[tuple[PendingItem, str]], after: Callable[[], None]) -> Iterator[tuple[PendingItem, str]]:
    """``items``, then ``after()`` once they are all read (the blank sections are known by then)."""
    yield from items
    after()


def batch_sync(backend: Backend, store: JobStore, embedder: Embedder, batch: BatchApiEmbedder, options: BatchOptions,
               collection: str | None = DEFAULT_COLLECTION,
               on_progress: BatchProgressCallback | None = None) -> BatchResult:
    """Embed the stored sections of ``collection`` (None: all) that are due, through the Batch API."""
    with store.worker("sync --batch-api") as worker:
        context = _context(worker, store, batch, embedder, options, on_progress)
        return _run(context, _due_stored(context, backend, collection), backend, collection)


def _due_stored(context: BatchContext, backend: Backend, collection: str | None) -> Iterator[tuple[PendingItem, str]]:
    """The stored sections due now that this run could lease, page by page in id order."""
    tally = context.run.tally
    for page in due_pages(lambda after: context.store.due(context.settings, after, DUE_PAGE, collection)):
        split = split_current(page, context.settings, {})
        _write_failures(backend, context, [FailureRow(section.id, EMPTY_CONTENT) for section in split.blank])
        held = context.worker.take(context.settings, {due.section.id: due.digest for due in split.due})
        tally.busy_elsewhere(len(split.due) - len(held))
        yield from ((PendingItem(due.section.id, due.digest), due.text) for due in split.due if due.section.id in held)


def collect_jobs(store: JobStore, embedder: Embedder, batch: BatchApiEmbedder, options: BatchOptions,
                 on_progress: BatchProgressCallback | None = None) -> BatchResult:
    """Look at every open job of this service once: write what has finished (waiting if asked)."""
    with store.worker("batches --collect") as worker:
        context = _context(worker, store, batch, embedder, options, on_progress)
        try:
            if options.wait:
                wait(context)
            else:
                poll_once(context)
        except BaseException as error:
            attach_result(error, context.run.summary(_open(context)))
            raise
        return _result(context)


def cancel_job(store: JobStore, batch: BatchApiEmbedder, key: str) -> BatchState:
    """Ask the provider to cancel a job's batch (by record or batch id). What it finished is still
    collected; the requests it never ran are let go, and their sections stay due."""
    job = store.job(key)
    if job is None or job.batch_id is None:
        raise ValueError(f"no batch job {key!r} with a batch at the provider (sections batches lists them)")
    state = batch.cancel(job.batch_id)
    store.polled(job.id, state)
    return state
