"""``MemoryBackend``: the pipeline's ``Backend`` in memory, for tests that need no Postgres.

It keeps PostgresBackend's semantics (``test_backend_contract.py`` runs one suite against both,
which is what makes it a faithful stand-in) with dicts and one lock. A claim holds its sections
until it ends and buffers its writes, which apply when it ends without an exception.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from core.fingerprint import fingerprint
from core.records import (EmbeddingSettings, FailureRow, Section, VectorRow, WriteResult, check_vector, stored_reason,
                          section_problem)

__all__ = ["MemoryBackend", "MemoryClaim"]

Key = tuple[str, str]  # (section id, model)
Planned = tuple[list[VectorRow], list[FailureRow]]  # what a write stores once it commits


@dataclass(slots=True)
class MemoryClaim:
    backend: MemoryBackend
    settings: EmbeddingSettings
    sections: list[Section]
    claimed: int
    last_id: str
    pending: list[Planned] = field(default_factory=list)

    def write(self, successes: Sequence[VectorRow], failures: Sequence[FailureRow]) -> WriteResult:
        result, planned = self.backend.plan(successes, failures)
        self.pending.append(planned)
        return result


class MemoryBackend:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.sections: dict[str, Section] = {}
        self.vectors: dict[Key, VectorRow] = {}  # vector stored as float32, content_hash as bytes
        self.failures: dict[Key, tuple[str, int]] = {}  # (reason, attempts)
        self.held: set[str] = set()  # section ids that open claims hold

    # -- read helpers for tests ------------------------------------------------------------------------

    def vector(self, section_id: str, model: str) -> np.ndarray | None:
        with self.lock:
            row = self.vectors.get((section_id, model))
        return None if row is None else row.vector

    def failure(self, section_id: str, model: str) -> tuple[str, int] | None:
        with self.lock:
            return self.failures.get((section_id, model))

    # -- Backend ---------------------------------------------------------------------------------------

    def upsert_sections(self, sections: Sequence[Section]) -> int:
        for section in sections:  # Postgres refuses the whole transaction
            if problem := section_problem(section):
                raise ValueError(f"section {section.id!r}: {problem}")
        changed = 0
        with self.lock:
            for section in sections:
                old = self.sections.get(section.id)
                if old is not None and section.metadata is None:
                    section = replace(section, metadata=old.metadata)
                changed += old != section
                self.sections[section.id] = section
        return changed

    def stored_hashes(self, model: str, section_ids: Sequence[str]) -> dict[str, bytes]:
        with self.lock:
            rows = [self.vectors.get((section_id, model)) for section_id in section_ids]
        return {row.section_id: row.content_hash for row in rows if row is not None and row.content_hash is not None}

    def plan(self, successes: Sequence[VectorRow], failures: Sequence[FailureRow]) -> tuple[WriteResult, Planned]:
        """What a write reports, and the rows it stores when committed (the last row per id wins)."""
        result = WriteResult()
        rows: list[VectorRow] = []
        with self.lock:
            for row in {row[0]: VectorRow(*row) for row in successes}.values():
                vector, problem = check_vector(row.vector)
                if problem:
                    result.rejected.append(FailureRow(row.section_id, problem))
                elif row.section_id not in self.sections:
                    result.missing.append(row.section_id)
                else:
                    digest = None if row.content_hash is None else bytes(row.content_hash)
                    rows.append(row._replace(vector=vector, content_hash=digest))
            succeeded = {row[0] for row in successes} - {failure.section_id for failure in result.rejected}
            kept = {f[0]: FailureRow(f[0], stored_reason(f[1]))
                    for f in [*failures, *result.rejected] if f[0] not in succeeded and f[0] in self.sections}
        result.written, result.recorded = len(rows), len(kept)
        return result, (rows, list(kept.values()))

    def _commit(self, model: str, planned: Planned) -> None:  # under self.lock
        rows, failures = planned
        for row in rows:
            self.vectors[row.section_id, model] = row
            self.failures.pop((row.section_id, model), None)
        for section_id, reason in failures:
            _, attempts = self.failures.get((section_id, model), ("", 0))
            self.failures[section_id, model] = (reason, attempts + 1)

    def write_batch(self, settings: EmbeddingSettings, successes: Sequence[VectorRow],
                    failures: Sequence[FailureRow]) -> WriteResult:
        with self.lock:  # one transaction
            result, planned = self.plan(successes, failures)
            self._commit(settings.model, planned)
        return result

    def _due(self, section: Section, settings: EmbeddingSettings) -> bool:
        stored = self.vectors.get((section.id, settings.model))
        return stored is None or stored.content_hash != fingerprint(section, settings)

    @contextmanager
    def claim_due(self, settings: EmbeddingSettings, after: str | None, limit: int) -> Iterator[MemoryClaim | None]:
        with self.lock:
            due = [section for section_id, section in sorted(self.sections.items())
                   if (after is None or section_id > after) and section_id not in self.held
                   and self._due(section, settings)][:limit]
            ids = {section.id for section in due}
            self.held |= ids
        if not due:
            yield None
            return
        claim = MemoryClaim(self, settings, [Section(s.id, s.title, s.content) for s in due], len(due), due[-1].id)
        committed = False
        try:
            yield claim
            committed = True
        finally:
            with self.lock:
                if committed:
                    for planned in claim.pending:
                        self._commit(settings.model, planned)
                self.held -= ids
