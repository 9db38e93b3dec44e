"""The one loop ingest and sync share: due sections to the embedder, each outcome to the writer.

Nothing here holds a transaction: the sections were taken with leases (short transactions of their
own), and outcomes are written as they arrive, a batch at a time, by the writer thread. So a
dropped connection costs at most the batch being written, which the writer keeps and retries
(``sections.pipeline.outage``: sending is held meanwhile). When the database stays away, the
replies still in flight are drained into the spool before the run stops: they are paid for.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from sections.engine.errors import Interrupted
from sections.fingerprint import Due
from sections.pipeline.backend import Backend
from sections.pipeline.outage import DatabaseAway, OutagePolicy, Patience
from sections.pipeline.spool import Spool
from sections.pipeline.tally import Tally
from sections.pipeline.writer import Writer
from sections.records import Embedder, EmbeddingOutcome, FailureRow, VectorRow

__all__ = ["NOT_EMBEDDED", "Keeping", "attach_result", "embed_into", "patience_for"]

_log = logging.getLogger(__name__)
NOT_EMBEDDED = "embedding failed"


def attach_result(error: BaseException, result: object) -> None:
    try:
        error.result = result  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass


@dataclass(frozen=True, slots=True)
class Keeping:
    """How a run keeps what it paid for when its database blinks: how long it waits (``outage``),
    where answers go when it stops waiting (``spool``; None: nowhere, the run just stops), and
    who hears when an outage starts (True) and ends (False)."""

    outage: OutagePolicy = OutagePolicy()
    spool: Spool | None = None
    on_outage: Callable[[bool], None] | None = None


def _event(embedder: Embedder, name: str) -> threading.Event | None:
    """The embedder's ``hold_sending`` or ``stop_requested`` (an ``EmbeddingService`` has both; an
    embedder without them cannot be held, and is simply not)."""
    event = getattr(embedder, name, None)
    return event if isinstance(event, threading.Event) else None


def patience_for(backend: Backend, embedder: Embedder, keeping: Keeping) -> Patience:
    """The run's ``Patience``: while the database is away, the embedder sends nothing new; when it
    stays away past the window, the embedder stops (its replies in flight get their grace)."""
    hold, stop = _event(embedder, "hold_sending"), _event(embedder, "stop_requested")

    def changed(away: bool) -> None:
        if hold is not None:
            (hold.set if away else hold.clear)()
        if keeping.on_outage is not None:
            keeping.on_outage(away)

    return Patience(backend, keeping.outage, changed, stop.set if stop is not None else None)


def embed_into(embedder: Embedder, dues: Iterator[Due], writer: Writer, tally: Tally, *,
               record_transient: bool = True) -> int:
    """Embed ``dues`` as the embedder asks for them and write every outcome through ``writer``
    (started here, and closed here, which flushes what arrived). Returns how many failures were
    left unrecorded because they were the provider's state (``record_transient`` False).

    A stop (an exception from the embedder, or the writer's error) is raised after the writer has
    flushed, with the partial summary as ``error.result``; KeyboardInterrupt & co. win over a
    database error."""
    pending: dict[Hashable, Due] = {}
    pending_lock = threading.Lock()
    transient = 0

    def feed() -> Iterator[tuple[int, str]]:
        for seq, due in enumerate(dues, 1):
            with pending_lock:
                pending[seq] = due
            yield seq, due.text

    stopped: BaseException | None = None
    writer.start()
    stream: Iterator[EmbeddingOutcome] | None = None
    try:
        stream = iter(embedder.stream_embeddings(feed()))
        for outcome in stream:
            with pending_lock:
                due = pending.pop(outcome.key)
            if outcome.ok:
                tally.answered()  # before the writer can commit it
                writer.put(VectorRow(due.section.id, outcome.vector, int(outcome.tokens or 0), due.digest))
            elif outcome.transient and not record_transient:
                transient += 1  # left due (its lease goes with the run)
            else:
                tally.answered()
                writer.put(FailureRow(due.section.id, outcome.error or NOT_EMBEDDED, due.digest))
            if writer.error is not None and not writer.spooling:
                break  # when spooling, the replies in flight are drained (the stop came with the expiry)
    except BaseException as error:
        stopped = error
        if not isinstance(error, Exception) and writer.patience is not None:
            writer.patience.give_up()  # Ctrl-C & co.: no waiting for a database that is away
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # pragma: no cover - best effort
                _log.debug("closing the embedding stream failed", exc_info=True)
        writer.close()  # flushes what arrived
        expired = writer.patience is not None and writer.patience.expired
        for event in (_event(embedder, "hold_sending"), _event(embedder, "stop_requested") if expired else None):
            if event is not None:
                event.clear()  # the service may serve another run (a watcher's next pass)
    if expired and isinstance(stopped, Interrupted):
        stopped = None  # the stop was the run's own: the database stayed away
    failure = writer.error or stopped
    if writer.error is not None and stopped is not None and not isinstance(stopped, Exception):
        failure = stopped
    if isinstance(failure, DatabaseAway) and writer.spool is not None and writer.spool.added:
        failure = DatabaseAway(f"{failure}; {writer.spool.added:,} answers paid for are kept in {writer.spool.path} "
                               "and written by the next run before it sends anything")
    if failure is not None:
        attach_result(failure, tally.result())
        raise failure
    return transient
