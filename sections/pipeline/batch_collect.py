"""Waiting for Batch API jobs and collecting them: poll, write what they delivered, retry by the rules.

Collecting a finished job writes each vector only if its section still holds the text sent (the
``JobStore`` checks in the same transaction), records each failure with its reason, and hands on
what did not come back: requests the provider refused (4xx) are split to their single inputs in a
new job, so the input at fault fails alone and nothing else is refused with it; a single input it
refused fails. Expired requests, and transient failures up to ``max_attempts`` jobs, go into a new
job by default: the Batch API's price and its separate rate-limit pool are why the run was sent
there, and a backfill can wait. With ``fallback`` they are embedded now through the synchronous
path instead (full price, its own retry and split rules). Only sections that still hold the text
sent and have no vector of it stored are ever sent again. Requests of a cancelled batch are let go:
their sections stay due. A job is written in parts as results stream in, so a collection cut short
resumes where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sections.batch.records import BatchApiEmbedder, BatchStatus, FailureKind, JobItem, JobRecord, PendingItem
from sections.engine.errors import TransientError
from sections.fingerprint import section_text
from sections.pipeline.backend import JobStore, JobWorker
from sections.pipeline.batch_submit import BatchRun, settle_unsubmitted, submit
from sections.pipeline.stream import NOT_EMBEDDED
from sections.records import Embedder, EmbeddingOutcome, EmbeddingSettings, FailureRow, VectorRow

__all__ = ["BatchContext", "BatchOptions", "poll_once", "wait"]


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How a batch run waits and retries."""

    wait: bool = True  # wait for the jobs and write their results; False: submit and return
    fallback: bool = False  # send what a job did not deliver through the synchronous path
    poll_initial_s: float = 1.0  # the first wait between polls, again whenever the counts move
    poll_max_s: float = 60.0  # the longest wait between polls, reached while nothing moves
    poll_factor: float = 1.5
    max_attempts: int = 3  # jobs a section may be in after transient failures before it fails
    write_batch: int = 1000  # results per write transaction

    def __post_init__(self) -> None:
        if not 0 < self.poll_initial_s <= self.poll_max_s or self.poll_factor < 1:
            raise ValueError("poll intervals must be positive, the first at most the longest, the factor >= 1")
        if self.max_attempts < 1 or self.write_batch < 1:
            raise ValueError("max_attempts and write_batch must be positive")


@dataclass(slots=True)
class BatchContext:
    """What a batch run works with: its registered worker, the job records, the Batch API side of
    the service and the service itself (for ``fallback``), its counts and options."""

    worker: JobWorker
    store: JobStore
    batch: BatchApiEmbedder
    embedder: Embedder
    run: BatchRun
    options: BatchOptions

    @property
    def settings(self) -> EmbeddingSettings:
        return self.batch.settings


class _Results:
    """A job's results waiting to be written, one transaction per ``write_batch``."""

    def __init__(self, context: BatchContext, job_id: str):
        self.context, self.job_id = context, job_id
        self.successes: list[VectorRow] = []
        self.failures: list[FailureRow] = []

    def add(self, row: VectorRow | FailureRow) -> None:
        if isinstance(row, VectorRow):
            self.successes.append(row)
        else:
            self.failures.append(row)
        if len(self.successes) + len(self.failures) >= self.context.options.write_batch:
            self.flush()

    def flush(self) -> None:
        if not (self.successes or self.failures):
            return
        context = self.context
        written = context.store.write(context.settings, self.job_id, self.successes, self.failures)
        context.run.tally.add_batch(written.successes, written.failures, written.result)
        context.run.changed += len(written.changed)
        self.successes, self.failures = [], []


def poll_once(context: BatchContext) -> list[JobRecord]:
    """Look at every open job of this service once: settle the unsubmitted, poll the running,
    collect the finished (unless another run is collecting them). Returns those still to wait for."""
    running: list[JobRecord] = []
    for job in context.store.open_jobs(context.settings, context.batch.endpoint):
        state = job.state
        if job.status is BatchStatus.SUBMITTING:
            settle_unsubmitted(context.worker, context.store, context.batch, job)
            running.append(job)
            continue
        if not job.status.finished and job.batch_id is not None:
            try:
                state = context.batch.retrieve(job.batch_id)
            except TransientError:
                running.append(job)
                continue
            context.store.polled(job.id, state)
            job = job._replace(status=state.status, total=state.total, completed=state.completed, failed=state.failed)
        if state.status.finished and context.worker.hold(job.id):
            try:
                _collect(context, job._replace(status=state.status, output_file_id=state.output_file_id,
                                               error_file_id=state.error_file_id, errors="\n".join(state.errors)))
            except TransientError:  # a result file cut off mid-way: what was written stays, the rest next time
                running.append(job)
        else:
            running.append(job)
    return running


def wait(context: BatchContext) -> None:
    """Poll until no job of this service is open, waiting longer between polls while nothing moves."""
    interval, last = context.options.poll_initial_s, None
    while True:
        running = poll_once(context)
        if not running:
            if not context.store.open_jobs(context.settings, context.batch.endpoint):
                return
            continue  # jobs just submitted for a retry: poll them at once
        context.run.report("waiting", running)
        moved = (len(running), sum(job.completed + job.failed for job in running), sum(job.total for job in running))
        interval = context.options.poll_initial_s if moved != last else min(context.options.poll_max_s,
                                                                           interval * context.options.poll_factor)
        last = moved
        time.sleep(interval)


def _collect(context: BatchContext, job: JobRecord) -> None:
    """Write what a finished job delivered and hand on the rest; the job is then closed."""
    items = context.store.items(job.id)
    results = context.batch.collect(items, job.state)
    written = _Results(context, job.id)
    again: list[JobItem] = []
    isolate: list[JobItem] = []
    for result in results:
        item = result.item
        if result.vector is not None:
            written.add(VectorRow(item.section_id, result.vector, item.tokens, item.digest))
        elif result.kind is FailureKind.CANCELLED:
            context.run.cancelled += 1
        elif result.kind is FailureKind.REJECTED:
            if result.alone:
                written.add(FailureRow(item.section_id, result.reason))
            else:
                isolate.append(item)
        elif result.kind is FailureKind.EXPIRED or item.attempt < context.options.max_attempts:
            again.append(item)
        else:
            written.add(FailureRow(item.section_id, f"{result.reason} (after {item.attempt} batch jobs)"))
    written.flush()
    context.run.batch_tokens += results.billed_tokens
    _resend(context, job, again, isolate=False)
    _resend(context, job, isolate, isolate=True)
    context.store.close(job.id, results.billed_tokens)
    context.run.jobs_collected += 1


def _resend(context: BatchContext, job: JobRecord, items: list[JobItem], *, isolate: bool) -> None:
    """Send again the items whose section still holds the text sent and has no vector of it stored:
    in a new job (``isolate``: one input per request), or synchronously with ``fallback``."""
    if not items:
        return
    by_id = {item.section_id: item for item in items}
    pending = [(PendingItem(section.id, by_id[section.id].digest, by_id[section.id].attempt + 1),
                section_text(section.title, section.content))
               for section in context.store.resendable(context.settings, job.id, list(by_id))]
    if context.options.fallback:
        _embed_now(context, job, pending)
        return

    def refuse(outcomes: list[EmbeddingOutcome]) -> None:
        refused = _Results(context, job.id)
        for outcome in outcomes:
            assert isinstance(outcome.key, PendingItem)
            refused.add(FailureRow(outcome.key.section_id, outcome.error or NOT_EMBEDDED))
        refused.flush()

    submit(context.worker, context.store, context.batch, pending, context.run, job.collection, refuse,
           replaces=job.id, isolate=isolate)


def _embed_now(context: BatchContext, job: JobRecord, pending: list[tuple[PendingItem, str]]) -> None:
    """``fallback``: embed through the synchronous path, under its rules, and write as results of the job."""
    written = _Results(context, job.id)
    billed_before = context.embedder.total_tokens
    try:
        for outcome in context.embedder.stream_embeddings(enumerate(text for _, text in pending)):
            assert isinstance(outcome.key, int)  # the keys given are positions in ``pending``
            item = pending[outcome.key][0]
            if outcome.ok:
                written.add(VectorRow(item.section_id, outcome.vector, int(outcome.tokens or 0), item.digest))
            else:
                written.add(FailureRow(item.section_id, outcome.error or NOT_EMBEDDED))
    finally:
        written.flush()
        billed = context.embedder.total_tokens - billed_before
        context.run.sync_tokens += billed
