"""What the pipeline needs from storage: the seam between orchestration and SQL.

Every method is one unit of work that either happens or does not (one transaction each), so the
pipeline's promises (nothing paid for is lost, a rerun embeds only what is missing, a failure is
recorded until it succeeds) hold for any backend that passes the contract suite.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from core.records import EmbeddingSettings, FailureRow, Section, VectorRow, WriteResult

__all__ = ["Backend", "Claim"]


class Claim(Protocol):
    """Sections locked for one worker until the claim ends; results are written inside it."""

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

    def write(self, successes: Sequence[VectorRow], failures: Sequence[FailureRow]) -> WriteResult:
        """Write results inside the claim; they are committed when the claim ends without an error."""
        ...


class Backend(Protocol):
    def upsert_sections(self, sections: Sequence[Section]) -> int:
        """Insert or update sections (unique by id) in one transaction; a None metadata keeps what is stored."""
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
        failure. Reasons are stored as ``records.stored_reason`` makes them.
        """
        ...

    def claim_due(self, settings: EmbeddingSettings, after: str | None,
                  limit: int) -> AbstractContextManager[Claim | None]:
        """Claim up to ``limit`` due sections after ``after`` (id order) that no other claim holds;
        None when there are none. Leaving the context commits what was written, or on an
        exception undoes it."""
        ...
