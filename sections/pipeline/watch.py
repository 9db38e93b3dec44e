"""Watch: keep a model's vectors in step with a changing table, for as long as the process runs.

A watcher is a loop of sync passes (``sections.pipeline.sync``: leases claimed with SKIP LOCKED, so any number
of watchers and syncs on any number of machines share the work and never embed a section twice).
Between passes it waits on a ``ChangeFeed``: Postgres NOTIFY from the table's trigger wakes it
within milliseconds of a commit; the wait also times out every ``poll_interval`` seconds, so a
missed notification, a pooler that cannot carry LISTEN, or a dropped connection costs at most one
interval.

Failures: a section the provider refused rests as ``RetrySchedule`` says (a growing delay, then not
at all until its content changes); a failure caused by the provider's state (an outage, 5xx after
every retry) is not held against the section: the pass leaves it due and the watcher backs off.
A database error ends the pass (what was committed stays), and the watcher backs off and goes on.
Only a fatal provider error (bad key, quota) or ``stop`` ends the loop.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sections.engine.errors import ProviderFatalError
from sections.pipeline.backend import Backend, ChangeFeed
from sections.pipeline.sync import SyncOptions, sync
from sections.records import Embedder, IngestSummary, RetrySchedule

__all__ = ["Pass", "WatchOptions", "WatchTotals", "watch"]

_log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class WatchOptions:
    collection: str | None
    poll_interval: float = 30.0
    claim_batch: int = 500
    retry: RetrySchedule = field(default_factory=RetrySchedule)
    once: bool = False


@dataclass(frozen=True, slots=True)
class Pass:
    """One pass, as the watcher reports it: its summary, or the error that cut it short."""

    summary: IngestSummary | None
    transient: int = 0
    error: str | None = None


@dataclass(slots=True)
class WatchTotals:
    passes: int = 0
    embedded: int = 0
    failed: int = 0
    tokens: int = 0
    errors: int = 0

    def add(self, done: Pass) -> None:
        self.passes += 1
        self.errors += done.error is not None
        if done.summary is not None:
            self.embedded += done.summary["success_count"]
            self.failed += done.summary["failed_count"]
            self.tokens += done.summary["total_tokens"]


def watch(backend: Backend, embedder: Embedder, options: WatchOptions, feed: ChangeFeed, stop: threading.Event,
          on_pass: Callable[[Pass], None] | None = None) -> WatchTotals:
    """Run passes until ``stop`` is set (or once, with ``options.once``); returns the totals."""
    totals = WatchTotals()
    backoff = 0.0
    sync_options = SyncOptions(retry=options.retry, record_transient=False, should_stop=stop.is_set)
    with backend.worker("watch", embedder.settings.model, options.collection) as worker:
        while not stop.is_set():
            done = _pass(backend, embedder, options, sync_options)
            totals.add(done)
            worker.report(totals.embedded)
            if on_pass is not None:
                on_pass(done)
            if options.once:
                break
            if done.error is not None or done.transient:
                backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
                stop.wait(backoff)
                continue
            backoff = 0.0
            if not stop.is_set():
                feed.wait(options.poll_interval)
    return totals


def _pass(backend: Backend, embedder: Embedder, options: WatchOptions, sync_options: SyncOptions) -> Pass:
    try:
        run = sync(backend, embedder, claim_batch=options.claim_batch, collection=options.collection,
                   options=sync_options)
    except ProviderFatalError:
        raise
    except Exception as error:
        _log.warning("watch pass cut short: %s", error)
        partial: IngestSummary | None = getattr(error, "result", None)
        return Pass(partial, 0, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    return Pass(run.summary, run.transient)
