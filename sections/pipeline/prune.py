"""Prune: after a run that read whole files and folders, delete what they no longer hold.

Only sections of the run's collection that were read from the files and folders named (by
``Section.source``) are candidates, and of those only the ids the run did not see: a heading
deleted from a page, a page deleted from a folder. Nothing else is ever touched. The candidates
are listed before anything is deleted, so a dry run shows exactly what a real one would delete.
"""
from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, replace

from sections.pipeline.backend import Backend
from sections.records import Deleted, Selection

__all__ = ["DELETE_BATCH", "Pruned", "prune_unseen"]

DELETE_BATCH = 5000  # ids per delete transaction


@dataclass(frozen=True, slots=True)
class Pruned:
    """The sections a prune chose, and (unless it was a dry run) what deleting them removed."""

    ids: list[str]
    deleted: Deleted | None


def prune_unseen(backend: Backend, scope: Selection, seen: Set[str], *, dry_run: bool = False) -> Pruned:
    """Delete the sections ``scope`` matches whose ids are not in ``seen``; with ``dry_run`` only list them."""
    if scope.empty or scope.ids or scope.prefix or scope.everything:
        raise ValueError("a prune is scoped by files and folders only")
    doomed = [section_id for section_id in backend.selected_ids(scope) if section_id not in seen]
    if dry_run:
        return Pruned(doomed, None)
    sections = vectors = 0
    for start in range(0, len(doomed), DELETE_BATCH):
        ids = tuple(doomed[start:start + DELETE_BATCH])
        deleted = backend.delete_selected(replace(scope, ids=ids, files=(), folders=()))
        sections, vectors = sections + deleted.sections, vectors + deleted.vectors
    return Pruned(doomed, Deleted(sections, vectors))
