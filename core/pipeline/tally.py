"""The counts of one run, shared by the thread that reads and the thread that writes."""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from core.records import FailureRow, IngestSummary, ProgressCounts, VectorRow, WriteResult

__all__ = ["ProgressCallback", "Tally"]

ProgressCallback = Callable[[ProgressCounts], None]
SECTION_GONE = "section no longer exists"


class Tally:
    def __init__(self, on_progress: ProgressCallback | None = None):
        self.lock = threading.Lock()
        self.on_progress = on_progress
        self.success = 0
        self.failed = 0
        self.skipped = 0
        self.busy = 0  # of the skipped: due, but another run holds them
        self.tokens = 0
        self.errors: dict[str, str] = {}
        self.dimensions: set[int] = set()  # dimensions of the vectors written

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

    def add_tokens(self, tokens: int) -> None:
        with self.lock:
            self.tokens += tokens

    def settle_tokens(self, billed: int | None) -> None:
        """The run's bill, as the service counted it, replaces the sum of the outcomes' tokens."""
        if billed is not None:
            with self.lock:
                self.tokens = billed

    def add_batch(self, successes: Sequence[VectorRow], failures: Sequence[FailureRow], result: WriteResult) -> None:
        """Count a committed batch: what was written, what failed and why."""
        missing = set(result.missing)
        rejected = {failure.section_id: failure.reason for failure in result.rejected}
        with self.lock:
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
        with self.lock:
            return ProgressCounts(success=self.success, failed=self.failed, skipped=self.skipped, tokens=self.tokens)

    def report(self) -> None:
        """Tell the caller's progress display where the run stands (from any thread)."""
        if self.on_progress is not None:
            self.on_progress(self.counts())

    def result(self) -> IngestSummary:
        with self.lock:
            summary = IngestSummary(
                success_count=self.success,
                failed_count=self.failed,
                total_tokens=self.tokens,
                failed_ids=list(self.errors),
                skipped_count=self.skipped,
                errors=dict(self.errors),
            )
            if self.busy:
                summary["busy_count"] = self.busy
            return summary
