"""Sync: embed every stored section whose vector for the embedder's model is missing or stale.

Many processes can run it at once: each claim (one transaction) locks up to ``claim_batch`` due
sections that no other worker holds, embeds them, writes the vectors and failures, and commits.
Each process walks the ids in order once, so a section that fails is tried once per run. On an
exception from the embedder, what arrived is committed and the exception re-raised with the
partial summary as ``error.result``.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from sections.fingerprint import EMPTY_CONTENT, Due, fingerprint, split_current
from sections.pipeline.backend import Backend
from sections.pipeline.ingest import NOT_EMBEDDED, Run, attach_result
from sections.pipeline.tally import ProgressCallback, Tally
from sections.records import DEFAULT_COLLECTION, Embedder, FailureRow, RetrySchedule, Section, VectorRow

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


def sync(backend: Backend, embedder: Embedder, *, claim_batch: int = 500, limit: int | None = None,
         on_progress: ProgressCallback | None = None, collection: str | None = DEFAULT_COLLECTION,
         options: SyncOptions = SyncOptions()) -> Run:
    """``limit`` caps the sections claimed by this call; ``skipped_count`` is 0 (only due sections are
    claimed); ``collection`` None syncs every collection. ``Run.transient`` counts the failures left
    unrecorded (``options.record_transient`` False)."""
    settings = embedder.settings
    stopping = options.should_stop or (lambda: False)
    transient = 0
    tally = Tally.billed_by(embedder, on_progress)
    after: str | None = None
    claimed_total = 0
    while (limit is None or claimed_total < limit) and not stopping():
        n = claim_batch if limit is None else min(claim_batch, limit - claimed_total)
        stopped: BaseException | None = None
        try:
            with backend.claim_due(settings, after, n, collection, options.retry) as claim:
                if claim is None:
                    break
                after = claim.last_id
                claimed_total += claim.claimed
                embedded = _embed(claim.sections, embedder, tally)
                successes, stopped = embedded.successes, embedded.stopped
                failures = embedded.failures + (embedded.transient if options.record_transient else [])
                transient += 0 if options.record_transient else len(embedded.transient)
                result = claim.write(successes, failures)
        except BaseException as error:  # the claim's writes were undone: nothing of it is counted
            interrupt = stopped if stopped is not None and not isinstance(stopped, Exception) else None
            tally.discard_pending()
            _stop(interrupt or error, tally)  # KeyboardInterrupt & co. win
        # committed
        tally.add_batch(successes, failures, result)
        if stopped is not None:
            _stop(stopped, tally)
    return Run(tally.result(), set(tally.dimensions), transient=transient)


class Embedded(NamedTuple):
    """What a claim's embedding gave: vectors, failures (``transient`` ones were the provider's
    state, not the input's), and the exception that stopped it, if any."""

    successes: list[VectorRow]
    failures: list[FailureRow]
    transient: list[FailureRow]
    stopped: BaseException | None


def _embed(sections: list[Section], embedder: Embedder, tally: Tally) -> Embedded:
    """Embed claimed sections; an exception from the embedder (``Interrupted`` when its service was
    asked to stop: it yields what arrives in its grace first) stops after what arrived is kept.
    Outcomes already delivered are never dropped: they are paid for."""
    split = split_current(sections, embedder.settings, NOTHING_STORED)
    done = Embedded([], [FailureRow(s.id, EMPTY_CONTENT, fingerprint(s, embedder.settings)) for s in split.blank], [], None)
    tally.answered(len(done.failures))
    due: dict[Hashable, Due] = dict(enumerate(split.due))
    stream = iter(embedder.stream_embeddings((key, item.text) for key, item in due.items())) if due else iter(())
    try:
        for outcome in stream:
            item = due[outcome.key]
            if outcome.ok:
                done.successes.append(VectorRow(item.section.id, outcome.vector, int(outcome.tokens or 0), item.digest))
            else:
                failed = FailureRow(item.section.id, outcome.error or NOT_EMBEDDED, item.digest)
                (done.transient if outcome.transient else done.failures).append(failed)
            tally.answered()
    except BaseException as error:
        return done._replace(stopped=error)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # abandons what is still in flight
    return done


def _stop(error: BaseException, tally: Tally) -> NoReturn:
    attach_result(error, tally.result())
    raise error
