"""Submitting Batch API jobs: sections planned into files, each job recorded before it runs.

The order of the steps is what makes a crash anywhere cost nothing twice. The file is uploaded
(free); the job and its items are recorded, which takes over the run's leases on those sections;
the batch is created, tagged with the record's id; its batch id is recorded. A run that died
between creating and recording left a job ``submitting`` without a batch id: the next run finds
the batch by its tag (or its input file) before it would create anything (``settle_unsubmitted``),
and only one live run at a time may handle a job (``JobWorker.hold``).
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sections.batch.records import (BatchApiEmbedder, BatchFile, BatchProgress, BatchProgressCallback, BatchState,
                                BatchStatus, BatchSummary, JobRecord, NewJob, PendingItem)
from sections.engine.errors import RequestRejected, TransientError
from sections.pipeline.backend import JobStore, JobWorker
from sections.pipeline.tally import Tally
from sections.records import EmbeddingOutcome

__all__ = ["BatchRun", "UPLOAD_ATTEMPTS", "settle_unsubmitted", "submit"]

UPLOAD_ATTEMPTS = 3  # an upload costs nothing, so a flaky one is simply tried again

Refuse = Callable[[list[EmbeddingOutcome]], None]


@dataclass(slots=True)
class BatchRun:
    """What one batch run did: the usual counts (``tally``) and the jobs', for the summary and the
    progress display."""

    on_progress: BatchProgressCallback | None = None
    jobs_submitted: int = 0
    jobs_collected: int = 0
    sections_submitted: int = 0
    submitted_tokens: int = 0
    batch_tokens: int = 0  # billed through the Batch API, at its price
    sync_tokens: int = 0  # billed synchronously (fallback), at the full price
    changed: int = 0
    retried: int = 0
    cancelled: int = 0
    tally: Tally = field(init=False)

    def __post_init__(self) -> None:
        self.tally = Tally(lambda: self.batch_tokens + self.sync_tokens)

    def report(self, phase: str, running: Iterable[JobRecord] = ()) -> None:
        if self.on_progress is None:
            return
        jobs = list(running)
        self.on_progress(BatchProgress(phase, self.sections_submitted, len(jobs), sum(job.total for job in jobs),
                                       sum(job.completed + job.failed for job in jobs),
                                       dict(Counter(job.status.value for job in jobs))))

    def summary(self, still_open: list[JobRecord]) -> BatchSummary:
        counts = self.tally.result()
        return BatchSummary(
            success_count=counts["success_count"], failed_count=counts["failed_count"],
            total_tokens=self.batch_tokens + self.sync_tokens, failed_ids=counts["failed_ids"],
            skipped_count=counts["skipped_count"], errors=counts["errors"], busy_count=counts.get("busy_count", 0),
            jobs_submitted=self.jobs_submitted, jobs_collected=self.jobs_collected, jobs_open=len(still_open),
            sections_submitted=self.sections_submitted,
            sections_pending=sum(max(0, job.sections - job.written - job.failures - job.changed - job.retried)
                                 for job in still_open),
            changed_count=self.changed, retried_count=self.retried, cancelled_count=self.cancelled,
            submitted_tokens=self.submitted_tokens, batch_tokens=self.batch_tokens, sync_tokens=self.sync_tokens)


def _upload(batch: BatchApiEmbedder, planned: BatchFile) -> str:
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            planned.content.seek(0)
            return batch.upload(planned)
        except TransientError:
            if attempt == UPLOAD_ATTEMPTS:
                raise
            time.sleep(attempt)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _create(store: JobStore, batch: BatchApiEmbedder, job_id: str, input_file_id: str) -> None:
    """Ask the provider to run a recorded job. A refusal (400) fails the job with its reason; an
    error that leaves it unknown whether the batch exists (a timeout) leaves the job ``submitting``,
    for ``settle_unsubmitted`` to look before anything is created again."""
    try:
        state = batch.create(input_file_id, job_id)
    except RequestRejected as error:
        state = BatchState(None, BatchStatus.FAILED, 0, 0, 0, errors=(str(error),))
    except TransientError:
        return
    store.polled(job_id, state)


def submit(worker: JobWorker, store: JobStore, batch: BatchApiEmbedder, items: Iterable[tuple[PendingItem, str]],
           run: BatchRun, collection: str | None, refuse: Refuse, *, replaces: str | None = None,
           isolate: bool = False) -> None:
    """Plan ``(PendingItem, text)`` pairs into files and submit each as a job (``replaces``: the job
    whose items these are, sent again). Items that cannot be sent go to ``refuse``."""
    ready: list[EmbeddingOutcome] = []
    for planned in batch.plan(items, ready, isolate=isolate):
        if ready:
            refuse(ready)
            ready = []
        try:
            file_id = _upload(batch, planned)
        finally:
            planned.content.close()
        job = NewJob(str(uuid.uuid4()), batch.settings, collection, batch.endpoint, file_id, planned.items,
                     planned.requests, planned.inputs, planned.tokens)
        worker.record(job, replaces)
        run.jobs_submitted += 1
        run.sections_submitted += len(job.items)
        run.submitted_tokens += job.tokens
        if replaces is not None:
            run.retried += len(job.items)
        _create(store, batch, job.id, file_id)
        run.report("submitting")
    if ready:
        refuse(ready)


def settle_unsubmitted(worker: JobWorker, store: JobStore, batch: BatchApiEmbedder, job: JobRecord) -> None:
    """A job recorded without a batch id whose submitter died (or could not tell whether its batch
    was created): adopt the batch made for it if there is one, else create it now. A transient
    error leaves it for the next look."""
    if not worker.hold(job.id):
        return  # a live run is submitting it
    try:
        found = batch.find(job.id, job.input_file_id, job.created_epoch)
    except TransientError:
        return
    if found is not None:
        store.polled(job.id, found)
    elif job.input_file_id is None:
        store.forget(job.id)
    else:
        _create(store, batch, job.id, job.input_file_id)
