"""Sync: embed every stored section whose vector for the embedder's model is missing or stale.

Many processes can run it at once: each claim (one transaction) locks up to ``claim_batch`` due
sections that no other worker holds, embeds them, writes the vectors and failures, and commits.
Each process walks the ids in order once, so a section that fails is tried once per run. On an
exception from the embedder, what arrived is committed and the exception re-raised with the
partial summary as ``error.result``.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import NoReturn

from core.fingerprint import EMPTY_CONTENT, Due, split_current
from core.pipeline.backend import Backend
from core.pipeline.ingest import NOT_EMBEDDED, Run, attach_result
from core.pipeline.tally import ProgressCallback, Tally
from core.records import DEFAULT_COLLECTION, Embedder, FailureRow, Section, VectorRow

__all__ = ["sync"]

NOTHING_STORED: dict[str, bytes] = {}  # claimed sections are due by the claim's own test


def sync(backend: Backend, embedder: Embedder, *, claim_batch: int = 500, limit: int | None = None,
         on_progress: ProgressCallback | None = None, collection: str | None = DEFAULT_COLLECTION) -> Run:
    """``limit`` caps the sections claimed by this call; ``skipped_count`` is 0 (only due sections are
    claimed); ``collection`` None syncs every collection."""
    settings = embedder.settings
    tally = Tally(on_progress)
    billed_before = embedder.total_tokens
    after: str | None = None
    claimed_total = 0
    while limit is None or claimed_total < limit:
        n = claim_batch if limit is None else min(claim_batch, limit - claimed_total)
        stopped: BaseException | None = None
        try:
            with backend.claim_due(settings, after, n, collection) as claim:
                if claim is None:
                    break
                after = claim.last_id
                claimed_total += claim.claimed
                successes, failures, stopped = _embed(claim.sections, embedder, tally)
                result = claim.write(successes, failures)
        except BaseException as error:  # the claim's writes were undone: nothing of it is counted
            interrupt = stopped if stopped is not None and not isinstance(stopped, Exception) else None
            _stop(interrupt or error, tally, embedder, billed_before)  # KeyboardInterrupt & co. win
        # committed
        tally.add_batch(successes, failures, result)
        if stopped is not None:
            _stop(stopped, tally, embedder, billed_before)
    tally.settle_tokens(embedder.total_tokens - billed_before)
    return Run(tally.result(), set(tally.dimensions))


def _embed(sections: list[Section], embedder: Embedder,
           tally: Tally) -> tuple[list[VectorRow], list[FailureRow], BaseException | None]:
    """Embed claimed sections; an exception from the embedder stops after what arrived is kept."""
    split = split_current(sections, embedder.settings, NOTHING_STORED)
    successes: list[VectorRow] = []
    failures = [FailureRow(section.id, EMPTY_CONTENT) for section in split.blank]
    due: dict[Hashable, Due] = dict(enumerate(split.due))
    try:
        if due:
            for outcome in embedder.stream_embeddings((key, item.text) for key, item in due.items()):
                item = due[outcome.key]
                if outcome.ok:
                    tally.add_tokens(int(outcome.tokens or 0))
                    successes.append(VectorRow(item.section.id, outcome.vector, int(outcome.tokens or 0), item.digest))
                else:
                    failures.append(FailureRow(item.section.id, outcome.error or NOT_EMBEDDED))
    except BaseException as error:
        return successes, failures, error
    return successes, failures, None


def _stop(error: BaseException, tally: Tally, embedder: Embedder, billed_before: int) -> NoReturn:
    tally.settle_tokens(embedder.total_tokens - billed_before)
    attach_result(error, tally.result())
    raise error
