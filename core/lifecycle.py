"""The store's lifecycle operations: collections, deleting, dropping a model, what a sync would do.

A part of ``SupabaseStore`` (its base class), kept in a module of its own so the face stays within
the size rules; it needs only the store's ``backend`` and ``connection()``.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from core.postgres import claims as pg_claims
from core.postgres import models as pg_models
from core.postgres import status as pg_status
from core.postgres.backend import PostgresBackend
from core.records import (DEFAULT_COLLECTION, Deleted, EmbeddingSettings, Section, Selection, collection_problem,
                          text_problem)

__all__ = ["Lifecycle", "check_collection", "check_model"]


def check_model(model_name: Any) -> None:
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model name must be a non-empty string")
    problem = text_problem(model_name)
    if problem:
        raise ValueError(f"model name {problem}")


def check_collection(name: Any) -> None:
    if problem := collection_problem(name):
        raise ValueError(problem)


class Lifecycle:
    backend: PostgresBackend

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def delete(self, selection: Selection) -> Deleted:
        """Delete what ``selection`` matches in its collection, with vectors and failures (one transaction)."""
        check_collection(selection.collection)
        return self.backend.delete_selected(selection)

    def selected_ids(self, selection: Selection) -> list[str]:
        return self.backend.selected_ids(selection)

    def collections(self) -> dict[str, int]:
        """Sections per collection."""
        with self.connection() as conn:
            return pg_status.collection_sizes(conn)

    def drop_model(self, model_name: str) -> pg_models.DroppedModel:
        """Delete a model's vectors, failures and leases and drop its indexes, in every collection."""
        check_model(model_name)
        with self.connection() as conn, conn.transaction():
            return pg_models.drop_model(conn, model_name)


    def due_sections(self, settings: EmbeddingSettings, collection: str | None = DEFAULT_COLLECTION,
                     page: int = 1000) -> Iterator[Section]:
        """The sections a sync would embed now, in id order, read without claiming (for a dry run)."""
        after: str | None = None
        while True:
            with self.connection() as conn:
                rows = pg_claims.due_sections(conn, settings, after, page, collection)
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1].id
