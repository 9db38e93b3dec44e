"""The store's direct writes: sections in bulk, vectors a caller already has, failures.

A part ``SupabaseStore`` holds (``store.writes``) and hands this work to; it is given the database
and the pipeline's backend. Each method checks what it is given before anything is written: a
section that cannot be stored, or whose id another collection holds, is a ``ValueError`` naming it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sections.pipeline.ingest import chunked, dedupe, valid_sections
from sections.postgres import vectors
from sections.postgres.backend import PostgresBackend
from sections.postgres.database import Database
from sections.records import DEFAULT_COLLECTION, EmbeddingSettings, FailureRow, Rejected, VectorRow
from sections.engine.tokens import LongInputPolicy
from sections.store.lifecycle import check_collection, check_model

__all__ = ["Writes"]


class Writes:
    def __init__(self, database: Database, backend: PostgresBackend):
        self.database = database
        self.backend = backend

    def upsert_sections(self, sections: Iterable[Any], *, chunk_size: int = 5000,
                        collection: str = DEFAULT_COLLECTION) -> int:
        """Insert or update sections (dicts or objects with id/title/content/metadata) in bulk.

        A missing ``metadata`` keeps what is stored; ``updated_at`` moves only when something
        changed. Raises ValueError (before writing that chunk) for a section that cannot be stored
        or whose id another collection holds. Returns the number of rows inserted or changed.
        """
        check_collection(collection)
        total = 0
        for chunk in chunked(sections, chunk_size):
            rejected: list[Rejected] = []
            rows = dedupe(valid_sections(chunk, rejected))
            if rejected:
                raise ValueError(f"section {rejected[0].section_id!r}: {rejected[0].reason}")
            if rows and (foreign := self.backend.foreign_sections([row.id for row in rows], collection)):
                section_id, other = next(iter(foreign.items()))
                raise ValueError(f"section {section_id!r} is stored in collection {other!r}")
            total += self.backend.upsert_sections(rows, collection) if rows else 0
        return total

    def write_embeddings(self, model_name: str, rows: Iterable[Sequence[Any]], *,
                         requested_dimensions: int | None = None, long_input: str | None = None,
                         batch_size: int = 5000) -> int:
        """Store vectors you already have: rows are ``(section_id, vector[, token_count[, content_hash]])``.

        The sections must exist. One transaction per ``batch_size`` rows; returns rows written.
        Raises ValueError for a vector pgvector cannot store (NaN, infinity, 0 or > 16000 dims).
        """
        check_model(model_name)
        settings = EmbeddingSettings(model_name, requested_dimensions,
                                     None if long_input is None else LongInputPolicy.parse(long_input))
        total = 0
        for chunk in chunked(rows, batch_size):
            batch = [_vector_row(row) for row in chunk]
            with self.database.connection() as conn, conn.transaction():
                result = vectors.write_embeddings(conn, settings, batch)
                if result.rejected:
                    raise ValueError(f"section {result.rejected[0].section_id!r}: {result.rejected[0].reason}")
                if result.missing:
                    raise ValueError(f"{len(result.missing)} section(s) do not exist, e.g. {result.missing[0]!r}")
            total += result.written
        return total

    def record_failures(self, model_name: str, failures: Mapping[str, str] | Iterable[tuple[str, str]]) -> int:
        """Upsert failures ({section id: reason}); attempts go up by one each time."""
        check_model(model_name)
        items = failures.items() if isinstance(failures, Mapping) else failures
        with self.database.connection() as conn, conn.transaction():
            return vectors.write_failures(conn, model_name, [FailureRow(i, r) for i, r in items])


def _vector_row(row: Sequence[Any]) -> VectorRow:
    """A caller's ``(id, vector[, tokens[, hash]])`` as a row; a full, well-typed tuple is one already
    (the writer reads rows by position), which spares a copy per row on bulk loads."""
    if len(row) == 4 and type(row[0]) is str and type(row[2]) is int:
        return cast(VectorRow, row)
    return VectorRow(str(row[0]), row[1], int(row[2]) if len(row) > 2 and row[2] is not None else 0,
                     row[3] if len(row) > 3 else None)
