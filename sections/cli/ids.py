"""Section ids across folders: ``--id-prefix``, and refusing ids stored from another file.

A document's section ids are its path relative to the folder named (``index.md#install``), so two
folders ingested into one store can hold the same ids: two sites' ``index.md``. Overwriting one
with the other silently was the fault; ingest now refuses, before any model loads or anything is
spent, a run whose document ids are stored from another file, and says the fix: ``--id-prefix``
(put before every id read from a document: ``--id-prefix api/``), or deleting the old copy when the
folder only moved (another ``--collection`` is no fix: ids are unique across collections). Ids
already stored keep their form, so nothing stored needs migrating or re-embedding; only a second
folder whose paths repeat the first's needs a prefix. The check reads the files once more and looks
the ids up by primary key, 5,000 a query.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Annotated, Any, Optional

import typer

from sections.cli.console import fail
from sections.records import Section

__all__ = ["CHECK_BATCH", "IdPrefix", "refuse_other_files", "with_prefix"]

CHECK_BATCH = 5000  # ids looked up per query

IdPrefix = Annotated[Optional[str], typer.Option(
    "--id-prefix", help="Put this before the id of every section read from a Markdown/MDX/reST/text file "
                        "(e.g. api/), so a second folder whose paths repeat the first's (two index.md) keeps "
                        "ids of its own.", show_default=False)]


def with_prefix(sections: Iterable[Section], prefix: Optional[str]) -> Iterator[Section]:
    """The sections, those read from documents with ``prefix`` before their ids."""
    for section in sections:
        yield replace(section, id=prefix + section.id) if prefix and section.from_document else section


def refuse_other_files(store: Any, sections: Iterable[Section]) -> None:
    """A one-line error (exit 1) if an id read from a document is stored from another file."""
    batch: list[tuple[str, str]] = []
    for section in sections:
        if section.from_document and section.source:
            batch.append((section.id, section.source))
        if len(batch) >= CHECK_BATCH:
            _check(store, batch)
            batch = []
    if batch:
        _check(store, batch)


def _check(store: Any, batch: list[tuple[str, str]]) -> None:
    clashes = store.other_files(batch)
    if clashes:
        first = clashes[0]
        fail(f"section id {first.id!r} is stored from {first.stored_from}, and this run reads it from "
             f"{first.read_from} (ids are paths relative to the folder named, the same in both folders); "
             f"give this folder ids of its own with --id-prefix (e.g. --id-prefix "
             f"{_folder_name(first.read_from, first.id)}/), or, if the folder moved, remove the old copy first: "
             f"sections delete --source {first.stored_from}")


def _folder_name(path: str, section_id: str) -> str:
    """The name of the folder ``path`` was read under, as its id (a path relative to it) says."""
    relative = section_id.split("#", 1)[0]
    root = path[:len(path) - len(relative)].rstrip("/") if path.endswith(relative) else path.rsplit("/", 1)[0]
    return root.rsplit("/", 1)[-1] or "docs"
