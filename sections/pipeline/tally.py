"""The counts of one run, shared by the thread that reads and the thread that writes."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from sections.records import Embedder, FailureRow, IngestSummary, ProgressCounts, VectorRow, WriteResult

__all__ = ["ProgressCallback", "Tally", "REPORT_INTERVAL_S"]

ProgressCallback = Callable[[ProgressCounts], None]
SECTION_GONE = "section no longer exists"
# Answers are reported at most this often (a fast run answers thousands a second); commits always are.
REPORT_INTERVAL_S = 0.1


class Tally:
    """``billed()`` is what the embedder has billed during this run: the one token count, shown by
    the progress bar while the run goes and returned in its summary (the sum of the answers'
    tokens is not the bill: identical texts are sent once, a retried request is paid twice)."""

    def __init__(self, billed: Callable[[], int], on_progress: ProgressCallback | None = None):
        self.lock = threading.Lock()
        self.billed = billed
        self.on_progress = on_progress
        self.success = 0
        self.failed = 0
        self.skipped = 0
        self.busy = 0  # of the skipped: due, but another run holds them
        self.pending = 0  # answers (vectors or failures) received, not committed yet
        self.waiting = 0  # sections another run holds that this run is waiting for
        self.errors: dict[str, str] = {}
        self.dimensions: set[int] = set()  # dimensions of the vectors written
        self._reported = 0.0  # time.monotonic() of the last report

    @classmethod
    def billed_by(cls, embedder: Embedder, on_progress: ProgressCallback | None = None) -> Tally:
        """A run's tally whose bill is what ``embedder`` bills from now on."""
        before = embedder.total_tokens
        return cls(lambda: embedder.total_tokens - before, on_progress)

    def fail(self, section_id: str | None, reason: str) -> None:
        with self.lock:
            self.failed += 1
            if section_id is not None:
                self.errors[section_id] = reason

    def skip(self, count: int) -> None:
        with self.lock:
            self.skipped += count

    def busy_elsewhere(self, count: int) -> None:
        if count:
            with self.lock:
                self.skipped += count
                self.busy += count

    def waiting_for(self, count: int) -> None:
        """How many sections another run holds that this run waits for (shown by the display)."""
        with self.lock:
            changed, self.waiting = self.waiting != count, count
        if changed:
            self.report()

    def done_elsewhere(self, count: int) -> None:
        """Sections another run held got stored there: done (they stay counted as skipped)."""
        if count:
            with self.lock:
                self.busy -= count

    def taken_over(self, count: int) -> None:
        """Sections whose holder died: this run embeds them (no longer skipped)."""
        if count:
            with self.lock:
                self.busy -= count
                self.skipped -= count

    def answered(self, count: int = 1) -> None:
        """``count`` rows are on their way to a commit (each will reach ``add_batch``; call this
        first): the display counts them now, so it moves as requests complete, not only when a
        batch or a claim commits."""
        if not count:
            return
        with self.lock:
            self.pending += count
            due = time.monotonic() - self._reported >= REPORT_INTERVAL_S
        if due:
            self.report()

    def add_batch(self, successes: Sequence[VectorRow], failures: Sequence[FailureRow], result: WriteResult) -> None:
        """Count a committed batch: what was written, what failed and why."""
        missing = set(result.missing)
        rejected = {failure.section_id: failure.reason for failure in result.rejected}
        with self.lock:
            self.pending = max(0, self.pending - len(successes) - len(failures))
            succeeded: set[str] = set()
            for row in successes:
                section_id = row[0]
                if section_id in succeeded:
                    continue
                if section_id in missing:
                    reason = SECTION_GONE
                elif section_id in rejected:
                    reason = rejected[section_id]
                else:
                    succeeded.add(section_id)
                    self.success += 1
                    self.errors.pop(section_id, None)
                    self.dimensions.add(len(row[1]))
                    continue
                self.failed += 1
                self.errors[section_id] = reason
            for section_id, reason, _ in failures:
                if section_id not in succeeded:
                    self.failed += 1
                    self.errors[section_id] = reason
        self.report()

    def counts(self) -> ProgressCounts:
        tokens = self.billed()
        with self.lock:
            counts = ProgressCounts(success=self.success, failed=self.failed, skipped=self.skipped,
                                    pending=self.pending, tokens=tokens)
            if self.waiting:
                counts["waiting"] = self.waiting
            return counts

    def report(self) -> None:
        """Tell the caller's progress display where the run stands (from any thread)."""
        with self.lock:
            self._reported = time.monotonic()
        if self.on_progress is not None:
            self.on_progress(self.counts())

    def result(self) -> IngestSummary:
        tokens = self.billed()
        with self.lock:
            summary = IngestSummary(
                success_count=self.success,
                failed_count=self.failed,
                total_tokens=tokens,
                failed_ids=list(self.errors),
                skipped_count=self.skipped,
                errors=dict(self.errors),
            )
            if self.busy:
                summary["busy_count"] = self.busy
            return summary
