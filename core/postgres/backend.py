"""The pipeline's ``Backend`` on Postgres/pgvector: each method one transaction on a pooled connection."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from core.postgres import claims, sections, vectors
from core.postgres.database import Database
from core.records import EmbeddingSettings, FailureRow, Section, VectorRow, WriteResult

__all__ = ["PostgresBackend", "PostgresClaim"]


@dataclass(slots=True)
class PostgresClaim:
    """Rows locked by the open transaction on ``conn``; results are written on that connection."""

    conn: psycopg.Connection[Any]
    settings: EmbeddingSettings
    sections: list[Section]
    claimed: int
    last_id: str

    def write(self, successes: Sequence[VectorRow], failures: Sequence[FailureRow]) -> WriteResult:
        return vectors.write_batch(self.conn, self.settings, successes, failures)


class PostgresBackend:
    def __init__(self, database: Database):
        self.database = database

    def upsert_sections(self, rows: Sequence[Section]) -> int:
        with self.database.connection() as conn, conn.transaction():
            return sections.upsert_sections(conn, rows)

    def stored_hashes(self, model: str, section_ids: Sequence[str]) -> dict[str, bytes]:
        with self.database.connection() as conn:
            return sections.stored_hashes(conn, model, section_ids)

    def write_batch(self, settings: EmbeddingSettings, successes: Sequence[VectorRow],
                    failures: Sequence[FailureRow]) -> WriteResult:
        with self.database.connection() as conn:
            return vectors.write_batch(conn, settings, successes, failures)

    @contextmanager
    def claim_due(self, settings: EmbeddingSettings, after: str | None, limit: int) -> Iterator[PostgresClaim | None]:
        with self.database.connection() as conn, conn.transaction():
            claimed = claims.claim_due(conn, settings, after, limit)
            if claimed is None:
                yield None
            else:
                yield PostgresClaim(conn, settings, claimed.sections, claimed.claimed, claimed.last_id)
