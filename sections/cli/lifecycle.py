"""The ``sections delete`` and ``sections drop-model`` commands: taking things out of the store.

Both show what they would remove and ask first (``--yes`` to skip), then report counts; both are
one transaction each, so an error part-way removes nothing.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from sections.cli.common import Collection, DatabaseUrl, JsonOut, Yes, chosen_collection, confirmed, open_store
from sections.cli.console import fail, out
from sections.records import DEFAULT_COLLECTION, Selection

__all__ = ["delete", "drop_model", "source_scope"]


def source_scope(paths: List[str], collection: str) -> Selection:
    """The sections read from these files and folders (absolute paths, as ingest stores them). A
    path that no longer exists may have been either: both readings are kept."""
    files, folders = [], []
    for path in paths:
        absolute = Path(os.path.abspath(path)).as_posix()
        if not os.path.isdir(path):
            files.append(absolute)
        if not os.path.isfile(path):
            folders.append(absolute.rstrip("/") + "/")
    return Selection(collection, files=tuple(files), folders=tuple(folders))


def as_given_at_ingest(store, paths: List[str], collection: str, scope: Selection) -> dict[str, tuple[str, ...]]:
    """``--source`` paths that are not here (relative to the current directory) read as ingest was
    given them: relative to the folder it was named, as hits show them (``guide/intro.md``). A path
    that names files under two such folders is refused, with the choice to make."""
    files, folders = list(scope.files), list(scope.folders)
    for path in paths:
        if os.path.exists(path):
            continue
        relative = Path(path).as_posix().strip("/")
        named = store.sources_named(collection, relative)
        roots = sorted({source.path[:len(source.path) - len(source.relative)] for source in named})
        if len(roots) > 1:
            fail(f"--source {path}: ingested under {len(roots)} folders ({', '.join(roots[:3])}); "
                 f"give the whole path, e.g. --source {roots[0]}{relative}")
        for source in named:
            if source.relative == relative:
                files.append(source.path)
            else:
                folders.append(f"{roots[0]}{relative}/")
    return {"files": tuple(dict.fromkeys(files)), "folders": tuple(dict.fromkeys(folders))}


def delete(
    ids: Annotated[Optional[List[str]], typer.Argument(help="Section ids to delete.", show_default=False)] = None,
    prefix: Annotated[Optional[str], typer.Option("--prefix", help="Every section whose id starts with this.")] = None,
    source: Annotated[Optional[List[str]], typer.Option(
        "--source", help="Every section read from this file or folder (repeatable): a path from here, or as "
                         "ingest was given it (relative to the folder named, as search shows it).")] = None,
    whole_collection: Annotated[bool, typer.Option("--whole-collection", help="Every section of the collection.")] = False,
    collection: Collection = DEFAULT_COLLECTION,
    yes: Yes = False,
    database_url: DatabaseUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Delete sections (by id, id prefix, source file or folder, or a whole collection) with their vectors."""
    name = chosen_collection(collection)
    scope = source_scope(source, name) if source else Selection(name)
    selection = Selection(name, tuple(ids or ()), prefix or None, scope.files, scope.folders, whole_collection)
    if selection.empty:
        fail("say what to delete: section ids, --prefix, --source or --whole-collection")
    with open_store(database_url) as store:
        if source:
            selection = replace(selection, **as_given_at_ingest(store, source, name, scope))
        matched = store.selected_ids(selection)
        if matched and not confirmed(f"Delete {len(matched):,} section(s) of collection {name!r} "
                                     f"(e.g. {matched[0]!r}) and their vectors?", yes):
            raise typer.Exit(1)
        deleted = store.delete(selection) if matched else None
    report = {"collection": name, "sections": deleted.sections if deleted else 0,
              "vectors": deleted.vectors if deleted else 0}
    if json_out:
        out.print_json(json.dumps(report))
    elif not matched:
        out.print(f"nothing in collection {name!r} matches; nothing deleted", markup=False)
    else:
        out.print(f"deleted {report['sections']:,} section(s) and {report['vectors']:,} vector(s) "
                  f"from collection {name!r}", markup=False)


def drop_model(
    model: Annotated[str, typer.Argument(help="The model whose vectors, failures and indexes to drop.")],
    yes: Yes = False,
    database_url: DatabaseUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Drop a model from the store: its vectors, failures and indexes, in every collection."""
    with open_store(database_url) as store:
        row = store.status(model)[model]
        if row["embedded"] == 0 and row["failed"] == 0 and not row["indexed"]:
            known = ", ".join(sorted(store.status())) or "none"
            fail(f"nothing stored for model {model!r} (models stored: {known})")
        if not confirmed(f"Drop model {model!r}: {row['embedded']:,} vector(s) and {row['failed']:,} "
                         "failure record(s), with its indexes?", yes):
            raise typer.Exit(1)
        try:
            dropped = store.drop_model(model)
        except ValueError as error:
            fail(str(error))
    if json_out:
        out.print_json(json.dumps({"model": model, "vectors": dropped.vectors, "failures": dropped.failures,
                                   "indexes": dropped.indexes}))
        return
    out.print(f"dropped {model}: {dropped.vectors:,} vector(s), {dropped.failures:,} failure record(s), "
              f"{len(dropped.indexes)} index(es)", markup=False)
