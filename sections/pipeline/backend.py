"""What the pipeline needs from storage: the seam between orchestration and SQL (``Backend``, and
``JobStore`` for the Batch API's jobs).

Every method is one unit of work that either happens or does not (one transaction each), so the
pipeline's promises (nothing paid for is lost, a rerun embeds only what is missing, a failure is
recorded until it succeeds) hold for any backend that passes the contract suite.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from sections.batch.records import BatchState, JobItem, JobRecord, JobWrite, NewJob
from sections.records import (DEFAULT_COLLECTION, Deleted, EmbeddingSettings, FailureRow, RetrySchedule, Section, Selection,
                          VectorRow, WriteResult)

__all__ = ["Backend", "ChangeFeed", "Claim", "JobStore", "JobWorker", "Leases", "due_pages"]


def due_pages(page: Callable[[str | None], list[Section]]) -> Iterator[list[Section]]:
    """The due sections, page by page: ``page(after)`` reads the next page in id order after the id
    ``after`` (a keyset walk, so sections embedded or added meanwhile neither repeat nor shift a
    page), until one comes back empty."""
    after: str | None = None
    while rows := page(after):
        yield rows
        after = rows[-1].id


class ChangeFeed(Protocol):
    """Word that sections changed (Postgres NOTIFY), or plain waiting where none can come."""

    def wait(self, timeout: float) -> bool:
        """Block until a change is announced (True) or ``timeout`` seconds pass (False)."""
        ...


class Leases(Protocol):
    """One running ingest's or sync's hold on the sections it is embedding, so no concurrent run
    pays for them again. The hold ends when their results are written, when the run ends, or when
    the run dies (a crashed run never blocks anyone for long). Taking a hold is a short transaction
    of its own: nothing stays open while the sections are embedded."""

    def take(self, settings: EmbeddingSettings, wanted: Mapping[str, bytes]) -> set[str]:
        """Lease the sections of ``wanted`` (id → the fingerprint about to be embedded) that are
        still due and held by no other run (no live lease, no sync claim); the ids now held."""
        ...

    def claim(self, settings: EmbeddingSettings, after: str | None, limit: int,
              collection: str | None = DEFAULT_COLLECTION, retry: RetrySchedule | None = None) -> Claim | None:
        """Lease up to ``limit`` due sections of ``collection`` (None: every collection) after
        ``after`` (id order) that no other run holds (and, with ``retry``, that are not resting
        after failing on the same fingerprint); None when there are none. Committed at once: the
        results are written as they arrive (``Backend.write_batch``, which drops the leases)."""
        ...

    def take_over(self, settings: EmbeddingSettings, wanted: Mapping[str, bytes]) -> set[str]:
        """``take``, after dropping the workers that died (and so their leases): what a run waiting
        for another run's sections calls."""
        ...

    def report(self, embedded: int) -> None:
        """How many sections this run has embedded so far (shown with its heartbeat)."""
        ...


class Claim(Protocol):
    """Sections a claim leased to its worker, and where it reached in id order."""

    @property
    def sections(self) -> list[Section]:
        """The claimed sections still due (another worker may have finished some meanwhile)."""
        ...

    @property
    def claimed(self) -> int:
        """How many sections the claim locked (some may have turned out done already)."""
        ...

    @property
    def last_id(self) -> str:
        """Where the claim reached in id order: the next claim starts after it."""
        ...


class Backend(Protocol):
    def upsert_sections(self, sections: Sequence[Section], collection: str = DEFAULT_COLLECTION) -> int:
        """Insert or update sections (unique by id) of ``collection`` in one transaction; a None
        metadata or source keeps what is stored; a section stored in another collection is left alone."""
        ...

    def foreign_sections(self, section_ids: Sequence[str], collection: str) -> dict[str, str]:
        """Of these ids, those another collection holds, with its name (ids are unique across collections)."""
        ...

    def stored_hashes(self, model: str, section_ids: Sequence[str]) -> dict[str, bytes]:
        """The fingerprint stored with each of these sections' vectors for ``model``."""
        ...

    def write_batch(self, settings: EmbeddingSettings, successes: Sequence[VectorRow],
                    failures: Sequence[FailureRow]) -> WriteResult:
        """Store vectors and record failures in one transaction.

        A success clears the section's failure; a vector for a section that no longer exists is
        reported in ``missing`` and nothing is written for it (a failure for one is dropped: there
        is nothing to refer to); a vector that cannot be stored is ``rejected`` and recorded as a
        failure. Reasons are stored as ``records.stored_reason`` makes them. The leases of the
        sections written are released in the same transaction.
        """
        ...

    def worker(self, command: str, model: str | None = None,
               collection: str | None = None) -> AbstractContextManager[Leases]:
        """A registered run (with a heartbeat) that can take leases; leaving the context releases them all."""
        ...

    def outage(self, error: BaseException) -> bool:
        """Whether ``error`` says the database cannot be reached just now (a dropped connection, a
        server or pooler away), not that what was asked is wrong: the first kind is waited out."""
        ...

    def reconnect(self) -> bool:
        """One quick try (a few seconds at most) to reach the database; True when it answers, with
        the connections renewed so the next call does not wait out a reconnection backoff."""
        ...

    def selected_ids(self, selection: Selection) -> list[str]:
        """The ids a selection matches, in id order."""
        ...

    def delete_selected(self, selection: Selection) -> Deleted:
        """Delete what a selection matches (with its vectors, failures and leases) in one transaction."""
        ...


class JobWorker(Leases, Protocol):
    """A registered run that leases sections and records the Batch API jobs it submits."""

    def record(self, job: NewJob, replaces: str | None = None) -> None:
        """Record ``job`` and its items (owned by this run until its batch id is known) and drop this
        run's leases on its sections, in one transaction; with ``replaces``, the sections' items
        leave that older job in the same transaction, so they are covered all along."""
        ...

    def hold(self, job_id: str) -> bool:
        """Become the one run handling an open job (submitting it after its submitter died before
        recording its batch id, or collecting it); False while another live run handles it."""
        ...


class JobStore(Protocol):
    """Batch API jobs as recorded: what each covers, where it stands, writing what it delivered."""

    def worker(self, command: str) -> AbstractContextManager[JobWorker]:
        """A registered run (as ``Backend.worker``) that can also record jobs."""
        ...

    def due(self, settings: EmbeddingSettings, after: str | None, limit: int, collection: str | None) -> list[Section]:
        """The next ``limit`` due sections after ``after`` in id order (read without locking)."""
        ...

    def resendable(self, settings: EmbeddingSettings, job_id: str, section_ids: Sequence[str]) -> list[Section]:
        """Of these sections of the job, those that still hold the text sent and have no vector of
        it stored: what may be sent again."""
        ...

    def open_jobs(self, settings: EmbeddingSettings | None = None, endpoint: str | None = None) -> list[JobRecord]:
        """Jobs not yet collected, oldest first (of ``settings`` at ``endpoint`` when given)."""
        ...

    def jobs(self, limit: int) -> list[JobRecord]:
        """The newest jobs, collected or not."""
        ...

    def job(self, key: str) -> JobRecord | None:
        """A job by its record id or its batch id."""
        ...

    def polled(self, job_id: str, state: BatchState) -> None:
        """Record what the provider said of the job's batch (the first time: its id, which ends the
        submitting run's hold on it)."""
        ...

    def forget(self, job_id: str) -> None:
        """Delete a job whose batch was never created (nothing was paid); its sections are due again."""
        ...

    def items(self, job_id: str) -> list[JobItem]:
        """The sections the job still covers."""
        ...

    def write(self, settings: EmbeddingSettings, job_id: str, successes: Sequence[VectorRow],
              failures: Sequence[FailureRow]) -> JobWrite:
        """Write results of the job in one transaction, only for sections whose text is still the
        one sent (the others are ``changed``); the items of every section named leave the job."""
        ...

    def close(self, job_id: str, billed_tokens: int) -> None:
        """The job is collected: its remaining items go, its bill is recorded."""
        ...
