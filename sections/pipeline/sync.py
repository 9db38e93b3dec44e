"""Sync: embed every stored section whose vector for the embedder's model is missing or stale.

Many processes can run it at once: the run registers a worker (``Backend.worker``) and claims due
sections a page at a time as the embedder asks for them (``Leases.claim``: a short transaction
that leases up to ``claim_batch`` sections no other run holds and commits at once). Outcomes are
written as they arrive, in small transactions (the writer thread, as ingest does); each write drops
its sections' leases, and the end of the run drops the rest. No transaction is open while anything
is embedded, so a dropped connection or a pooler's timeout loses no answer that was paid for.

Each run walks the ids in order once, so a section that fails is tried once per run. On an
exception from the embedder, what arrived is written and the exception re-raised with the partial
summary as ``error.result``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sections.fingerprint import EMPTY_CONTENT, Due, fingerprint, split_current
from sections.pipeline.backend import Backend, Leases
from sections.pipeline.ingest import DEFAULT_WRITE_BATCH, Run, write_spool
from sections.pipeline.outage import Patience
from sections.pipeline.stream import Keeping, embed_into, patience_for
from sections.pipeline.tally import ProgressCallback, Tally
from sections.pipeline.writer import Writer
from sections.records import DEFAULT_COLLECTION, Embedder, FailureRow, RetrySchedule

__all__ = ["SyncOptions", "sync"]

NOTHING_STORED: dict[str, bytes] = {}  # claimed sections are due by the claim's own test


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """How a watcher's passes differ from a plain sync: failed sections rest as ``retry`` says,
    failures caused by the provider's state (an outage) are not recorded against the sections,
    and ``should_stop`` ends a pass before its next claim (a claim under way ends when the
    embedder's own stop says: ``EmbeddingService.stop_requested``)."""

    retry: RetrySchedule | None = None
    record_transient: bool = True
    should_stop: Callable[[], bool] | None = None
    write_batch: int = DEFAULT_WRITE_BATCH
    flush_interval: float = 0.25  # the longest an outcome waits before it is written
    keeping: Keeping = Keeping()  # waiting out a database that blinks; the spool when it does not come back


@dataclass(frozen=True, slots=True)
class _Walk:
    """What a run claims: at most ``limit`` sections of ``collection``, ``claim_batch`` a claim."""

    claim_batch: int
    limit: int | None
    collection: str | None


def sync(backend: Backend, embedder: Embedder, *, claim_batch: int = 500, limit: int | None = None,
         on_progress: ProgressCallback | None = None, collection: str | None = DEFAULT_COLLECTION,
         options: SyncOptions = SyncOptions()) -> Run:
    """``limit`` caps the sections claimed by this call; ``skipped_count`` is 0 (only due sections are
    claimed); ``collection`` None syncs every collection. ``Run.transient`` counts the failures left
    unrecorded (``options.record_transient`` False)."""
    settings = embedder.settings
    patience = patience_for(backend, embedder, options.keeping)
    with backend.worker("sync", settings.model, collection) as leases:
        from_spool = write_spool(backend, settings, options.keeping.spool, patience)
        tally = Tally.billed_by(embedder, on_progress)
        writer = Writer(backend, settings, tally, batch_size=options.write_batch, queue_size=2 * options.write_batch,
                        flush_interval=options.flush_interval, patience=patience, spool=options.keeping.spool)
        dues = _claimed(leases, embedder, _Walk(claim_batch, limit, collection), options, tally, writer, patience)
        transient = embed_into(embedder, dues, writer, tally, record_transient=options.record_transient)
    return Run(tally.result(), set(tally.dimensions), transient=transient, from_spool=from_spool)


def _claimed(leases: Leases, embedder: Embedder, walk: _Walk, options: SyncOptions, tally: Tally,
             writer: Writer, patience: Patience) -> Iterator[Due]:
    """The due sections, claimed a page at a time as they are asked for; blank ones go straight to
    the writer as failures. Stops at the limit, when ``options.should_stop`` says, or when the
    writer has failed."""
    settings = embedder.settings
    stopping = options.should_stop or (lambda: False)
    after: str | None = None
    claimed_total = 0
    while (walk.limit is None or claimed_total < walk.limit) and not stopping() and writer.error is None:
        n = walk.claim_batch if walk.limit is None else min(walk.claim_batch, walk.limit - claimed_total)
        claim = patience.call(lambda: leases.claim(settings, after, n, walk.collection, options.retry))
        if claim is None:
            return
        after = claim.last_id
        claimed_total += claim.claimed
        split = split_current(claim.sections, settings, NOTHING_STORED)
        tally.answered(len(split.blank))
        for blank in split.blank:
            writer.put(FailureRow(blank.id, EMPTY_CONTENT, fingerprint(blank, settings)))
        yield from split.due
