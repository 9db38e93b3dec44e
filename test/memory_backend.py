"""``MemoryBackend``: the pipeline's ``Backend`` in memory, for tests that need no Postgres.

It keeps PostgresBackend's semantics (``test_backend_contract.py`` runs one suite against both,
which is what makes it a faithful stand-in) with dicts and one lock. A claim leases its sections
to its worker at once; a write drops the leases of what it stores, the worker's end the rest.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from sections.fingerprint import fingerprint
from sections.records import (DEFAULT_COLLECTION, Deleted, EmbeddingSettings, FailureRow, RetrySchedule, Section, Selection,
                          VectorRow, WriteResult, check_vector, stored_reason, section_problem)

__all__ = ["MemoryBackend", "MemoryClaimed", "MemoryLeases"]

Key = tuple[str, str]  # (section id, model)
Planned = tuple[list[VectorRow], list[FailureRow]]  # what a write stores once it commits


@dataclass(frozen=True, slots=True)
class MemoryClaimed:
    sections: list[Section]
    claimed: int
    last_id: str


@dataclass(slots=True)
class MemoryLeases:
    backend: MemoryBackend
    worker: str
    embedded: int = 0

    def report(self, embedded: int) -> None:
        self.embedded = embedded

    def claim(self, settings: EmbeddingSettings, after: str | None, limit: int,
              collection: str | None = DEFAULT_COLLECTION, retry: RetrySchedule | None = None) -> MemoryClaimed | None:
        backend = self.backend
        with backend.lock:
            due = [section for section_id, section in sorted(backend.sections.items())
                   if (after is None or section_id > after)
                   and (collection is None or backend.collections[section_id] == collection)
                   and (section_id, settings.model) not in backend.leases
                   and backend.due(section, settings) and not backend.resting(section, settings, retry)][:limit]
            for section in due:
                backend.leases[section.id, settings.model] = self.worker
        if not due:
            return None
        return MemoryClaimed([Section(s.id, s.title, s.content) for s in due], len(due), due[-1].id)

    def take_over(self, settings: EmbeddingSettings, wanted: Mapping[str, bytes]) -> set[str]:
        return self.take(settings, wanted)  # a worker's leases go when it ends: none is ever dead here

    def take(self, settings: EmbeddingSettings, wanted: Mapping[str, bytes]) -> set[str]:
        backend = self.backend
        with backend.lock:
            taken = set()
            for section_id, digest in wanted.items():
                key = (section_id, settings.model)
                stored = backend.vectors.get(key)
                if (section_id not in backend.sections or key in backend.leases
                        or (stored is not None and stored.content_hash == digest)):
                    continue
                backend.leases[key] = self.worker
                taken.add(section_id)
        return taken


class MemoryBackend:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.sections: dict[str, Section] = {}
        self.collections: dict[str, str] = {}  # section id -> its collection
        self.leases: dict[Key, str] = {}  # -> the worker holding it
        self.vectors: dict[Key, VectorRow] = {}  # vector stored as float32, content_hash as bytes
        self.failures: dict[Key, tuple[str, int]] = {}  # (reason, attempts)
        self.failed_on: dict[Key, tuple[bytes | None, float]] = {}  # (fingerprint, when) of the last failure

    # -- read helpers for tests ------------------------------------------------------------------------

    def vector(self, section_id: str, model: str) -> np.ndarray | None:
        with self.lock:
            row = self.vectors.get((section_id, model))
        return None if row is None else row.vector

    def failure(self, section_id: str, model: str) -> tuple[str, int] | None:
        with self.lock:
            return self.failures.get((section_id, model))

    # -- Backend ---------------------------------------------------------------------------------------

    def upsert_sections(self, sections: Sequence[Section], collection: str = DEFAULT_COLLECTION) -> int:
        for section in sections:  # Postgres refuses the whole transaction
            if problem := section_problem(section):
                raise ValueError(f"section {section.id!r}: {problem}")
        changed = 0
        with self.lock:
            for section in sections:
                old = self.sections.get(section.id)
                if old is not None and self.collections[section.id] != collection:
                    continue
                if old is not None and section.metadata is None:
                    section = replace(section, metadata=old.metadata)
                if old is not None and section.source is None:
                    section = replace(section, source=old.source)
                changed += old != section or (old is not None and old.source != section.source)
                self.sections[section.id] = section
                self.collections[section.id] = collection
        return changed

    def foreign_sections(self, section_ids: Sequence[str], collection: str) -> dict[str, str]:
        with self.lock:
            return {i: self.collections[i] for i in section_ids if i in self.collections and self.collections[i] != collection}

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
            kept = {f[0]: FailureRow(f[0], stored_reason(f[1]), FailureRow(*f).content_hash)
                    for f in [*failures, *result.rejected] if f[0] not in succeeded and f[0] in self.sections}
        result.written, result.recorded = len(rows), len(kept)
        return result, (rows, list(kept.values()))

    def _commit(self, model: str, planned: Planned) -> None:  # under self.lock
        rows, failures = planned
        for section_id in [row.section_id for row in rows] + [failure.section_id for failure in failures]:
            self.leases.pop((section_id, model), None)
        for row in rows:
            self.vectors[row.section_id, model] = row
            self.failures.pop((row.section_id, model), None)
        for section_id, reason, digest in failures:
            _, attempts = self.failures.get((section_id, model), ("", 0))
            if self.failed_on.get((section_id, model), (None, 0.0))[0] != digest:
                attempts = 0  # attempts count the failures of one fingerprint
            self.failures[section_id, model] = (reason, attempts + 1)
            self.failed_on[section_id, model] = (digest, time.time())

    def write_batch(self, settings: EmbeddingSettings, successes: Sequence[VectorRow],
                    failures: Sequence[FailureRow]) -> WriteResult:
        with self.lock:  # one transaction
            result, planned = self.plan(successes, failures)
            self._commit(settings.model, planned)
        return result

    def due(self, section: Section, settings: EmbeddingSettings) -> bool:
        stored = self.vectors.get((section.id, settings.model))
        return stored is None or stored.content_hash != fingerprint(section, settings)

    def resting(self, section: Section, settings: EmbeddingSettings, retry: RetrySchedule | None) -> bool:
        key = (section.id, settings.model)
        if retry is None or key not in self.failures:
            return False
        digest, when = self.failed_on[key]
        attempts = self.failures[key][1]
        return digest == fingerprint(section, settings) and (
            attempts >= retry.max_attempts or when > time.time() - min(attempts * retry.delay_s, retry.cap_s))

    @contextmanager
    def worker(self, command: str, model: str | None = None, collection: str | None = None) -> Iterator[MemoryLeases]:
        worker = f"{command}-{uuid.uuid4().hex}"
        try:
            yield MemoryLeases(self, worker)
        finally:
            with self.lock:
                for key in [key for key, holder in self.leases.items() if holder == worker]:
                    del self.leases[key]

    def outage(self, error: BaseException) -> bool:
        """A ``ConnectionError`` stands for a database that is away (what tests raise to say so)."""
        return isinstance(error, ConnectionError)

    def reconnect(self) -> bool:
        return True

    def _selected(self, selection: Selection, section_id: str) -> bool:
        section = self.sections[section_id]
        source = section.source or ""
        return self.collections[section_id] == selection.collection and (
            selection.everything or section_id in selection.ids
            or (selection.prefix is not None and section_id.startswith(selection.prefix))
            or (section.source is not None and source in selection.files)
            or (section.source is not None and any(source.startswith(folder) for folder in selection.folders)))

    def selected_ids(self, selection: Selection) -> list[str]:
        with self.lock:
            return sorted(i for i in self.sections if self._selected(selection, i))

    def delete_selected(self, selection: Selection) -> Deleted:
        with self.lock:
            doomed = set(self.selected_ids(selection))
            vectors = 0
            for table in (self.vectors, self.failures, self.failed_on, self.leases):
                for key in [key for key in table if key[0] in doomed]:
                    vectors += table is self.vectors
                    del table[key]
            for section_id in doomed:
                del self.sections[section_id]
                del self.collections[section_id]
        return Deleted(len(doomed), vectors)
