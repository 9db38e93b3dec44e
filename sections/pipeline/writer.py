"""The writer thread: outcomes in, one transaction per batch out, overlapping the embedding.

Replies arrive while later requests are still in flight; writing them on another thread keeps the
provider busy. The queue between the two is bounded, so a slow database slows the reading side
instead of filling memory. A batch is written when it is full, or when its oldest outcome has
waited ``flush_interval``: a steady trickle of replies must not sit unwritten, since a crash would
lose work that was paid for.

A write that fails because the database is away is retried through the run's ``Patience`` (the
run holds its sending meanwhile), so a blink of the database or its pooler costs nothing. If it
stays away for the whole window, the batch and every later answer go to the run's ``Spool``
instead, for the next run to write.
"""
from __future__ import annotations

import queue
import threading
import time

from sections.pipeline.backend import Backend
from sections.pipeline.outage import DatabaseAway, Patience
from sections.pipeline.spool import Spool
from sections.pipeline.tally import Tally
from sections.records import EmbeddingSettings, FailureRow, VectorRow, WriteResult

__all__ = ["Writer"]


class _Stop:
    """The last item a writer takes: flush what is held and end."""


_STOP = _Stop()
Item = VectorRow | FailureRow | _Stop


class Writer(threading.Thread):
    def __init__(self, backend: Backend, settings: EmbeddingSettings, tally: Tally, *,
                 batch_size: int, queue_size: int, flush_interval: float,
                 patience: Patience | None = None, spool: Spool | None = None):
        super().__init__(name="sections-writer", daemon=True)
        self.backend, self.settings, self.tally = backend, settings, tally
        self.patience, self.spool = patience, spool
        self.batch_size, self.flush_interval = batch_size, flush_interval
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=queue_size)
        self.error: BaseException | None = None  # set when a write failed: the producer stops the run
        self.batches = 0

    def put(self, item: VectorRow | FailureRow) -> None:
        self.queue.put(item)

    def close(self) -> None:
        """Flush what arrived and wait for the thread to end."""
        self.queue.put(_STOP)
        self.join()

    def run(self) -> None:
        successes: list[VectorRow] = []
        failures: list[FailureRow] = []
        oldest: float | None = None  # when the first unflushed outcome arrived
        while True:
            wait = self.flush_interval if oldest is None else max(0.0, oldest + self.flush_interval - time.monotonic())
            item: Item | None
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is not None and not isinstance(item, _Stop):
                if oldest is None:
                    oldest = time.monotonic()
                if isinstance(item, VectorRow):
                    successes.append(item)
                else:
                    failures.append(item)
            due = oldest is not None and time.monotonic() - oldest >= self.flush_interval
            stop = isinstance(item, _Stop)
            if stop or due or len(successes) + len(failures) >= self.batch_size:
                if successes or failures:
                    self._flush(successes, failures)
                successes, failures, oldest = [], [], None
            if stop:
                break

    @property
    def spooling(self) -> bool:
        """The database stayed away: what arrives goes to the spool (the producer still drains the
        replies in flight: they are paid for)."""
        return self.spool is not None and isinstance(self.error, DatabaseAway)

    def _flush(self, successes: list[VectorRow], failures: list[FailureRow]) -> None:
        if self.error is None:
            try:
                result = self._write(successes, failures)
            except BaseException as error:  # surfaces in the producer, which stops the run
                self.error = error
            else:
                self.batches += 1
                self.tally.add_batch(successes, failures, result)
                return
        if self.spool is not None and self.spooling:
            self.spool.add([*successes, *failures])

    def _write(self, successes: list[VectorRow], failures: list[FailureRow]) -> WriteResult:
        if self.patience is None:
            return self.backend.write_batch(self.settings, successes, failures)
        return self.patience.call(lambda: self.backend.write_batch(self.settings, successes, failures))
