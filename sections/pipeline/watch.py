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
A database that goes away under a pass is waited out inside it (``sections.pipeline.outage``);
one that is away when a pass starts makes the watcher probe it every ``OUTAGE_PROBE_S`` and start
the next pass as soon as it answers (``keeping.on_outage`` hears once when the outage starts and
once when it ends). Any other database error ends the pass (what was written stays), and the
watcher backs off and goes on. Only a fatal provider error (bad key, quota) or ``stop`` ends the loop.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sections.engine.errors import ProviderFatalError
from sections.pipeline.backend import Backend, ChangeFeed
from sections.pipeline.outage import DatabaseAway
from sections.pipeline.stream import Keeping
from sections.pipeline.sync import SyncOptions, sync
from sections.records import Embedder, IngestSummary, RetrySchedule

__all__ = ["Pass", "WatchOptions", "WatchTotals", "watch"]

_log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0
OUTAGE_PROBE_S = 1.0  # between probes of a database that is away between passes


@dataclass(frozen=True, slots=True)
class WatchOptions:
    collection: str | None
    poll_interval: float = 30.0
    claim_batch: int = 500
    retry: RetrySchedule = field(default_factory=RetrySchedule)
    once: bool = False
    keeping: Keeping = field(default_factory=Keeping)


@dataclass(frozen=True, slots=True)
class Pass:
    """One pass, as the watcher reports it: its summary, or the error that cut it short."""

    summary: IngestSummary | None
    transient: int = 0
    error: str | None = None
    outage: bool = False  # the error was the database being out of reach


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
    sync_options = SyncOptions(retry=options.retry, record_transient=False, should_stop=stop.is_set,
                               keeping=options.keeping)
    away = False
    with backend.worker("watch", embedder.settings.model, options.collection) as worker:
        while not stop.is_set():
            done = _pass(backend, embedder, options, sync_options)
            if done.outage and not options.once:
                away = away or _said(options.keeping, True)
                while not stop.is_set() and not backend.reconnect():
                    stop.wait(OUTAGE_PROBE_S)
                continue
            if away:
                away = _said(options.keeping, False)
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


def _said(keeping: Keeping, away: bool) -> bool:
    if keeping.on_outage is not None:
        keeping.on_outage(away)
    return away


def _pass(backend: Backend, embedder: Embedder, options: WatchOptions, sync_options: SyncOptions) -> Pass:
    try:
        run = sync(backend, embedder, claim_batch=options.claim_batch, collection=options.collection,
                   options=sync_options)
    except ProviderFatalError:
        raise
    except Exception as error:
        _log.info("watch pass cut short: %s", error)
        partial: IngestSummary | None = getattr(error, "result", None)
        return Pass(partial, 0, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
                    outage=isinstance(error, DatabaseAway) or backend.outage(error))
    return Pass(run.summary, run.transient)
