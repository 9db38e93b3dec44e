"""Sections in Postgres: bulk upsert, lookups, deletes, and the fingerprints stored beside vectors.

Each function takes a connection and runs inside the caller's transaction where it writes, so the
pipeline decides what one transaction holds. Writes are a binary COPY into a temporary table and
one ``INSERT … ON CONFLICT``: never a statement per row.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypedDict

import psycopg
from psycopg.types.json import Jsonb

from sections.records import Deleted, Section, Selection

__all__ = ["StoredSection", "delete_sections", "delete_selected", "find_sections", "foreign_sections", "get_section",
           "selected_ids", "stored_hashes", "upsert_sections"]

_STAGE = "_sections_stage_v2"  # named by its columns' version: a pooled session may hold an older one
_STAGE_DDL = (
    "set local client_min_messages = warning; "
    f"create temp table if not exists {_STAGE} "
    f"(id text, title text, content text, metadata jsonb, source text) on commit delete rows; delete from {_STAGE}"
)
_COPY = f"copy {_STAGE} (id, title, content, metadata, source) from stdin (format binary)"
# A row of another collection is never touched (the pipeline sets those ids aside first; this
# guard holds against a concurrent run). None metadata/source keep what is stored.
_UPSERT = f"""
insert into sections as s (id, title, content, metadata, collection, source, updated_at)
select id, title, content, metadata, %(collection)s, source, now() from {_STAGE}
on conflict (id) do update
   set title = excluded.title,
       content = excluded.content,
       metadata = coalesce(excluded.metadata, s.metadata),
       source = coalesce(excluded.source, s.source),
       updated_at = excluded.updated_at
 where s.collection = excluded.collection
   and (s.title is distinct from excluded.title
        or s.content is distinct from excluded.content
        or (excluded.metadata is not null and s.metadata is distinct from excluded.metadata)
        or (excluded.source is not null and s.source is distinct from excluded.source))
"""
# What a selection matches, inside one collection (``Selection`` says how each part is read).
_SELECTED = """
s.collection = %(collection)s and (%(everything)s
    or s.id = any(%(ids)s)
    or (%(prefix)s::text is not null and starts_with(s.id, %(prefix)s))
    or s.source = any(%(files)s)
    or exists (select 1 from unnest(%(folders)s::text[]) f where starts_with(s.source, f)))
"""


class StoredSection(TypedDict):
    id: str
    title: str
    content: str
    metadata: Any
    collection: str
    source: str | None
    updated_at: datetime


def upsert_sections(conn: psycopg.Connection[Any], rows: Sequence[Section], collection: str) -> int:
    """COPY + one upsert into ``collection``, inside the caller's transaction; rows must be unique by id.

    A row whose ``metadata`` (or ``source``) is None keeps what is stored; ``updated_at`` moves
    only when something changed; a row held by another collection is left alone. Returns the rows
    inserted or changed.
    """
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.execute(_STAGE_DDL)
        with cur.copy(_COPY) as copy:
            copy.set_types(["text", "text", "text", "jsonb", "text"])
            for row in rows:
                copy.write_row((row.id, row.title, row.content,
                                None if row.metadata is None else Jsonb(row.metadata), row.source))
        cur.execute(_UPSERT, {"collection": collection})
        return cur.rowcount


def get_section(conn: psycopg.Connection[Any], section_id: str) -> StoredSection | None:
    row = conn.execute(
        "select id, title, content, metadata, collection, source, updated_at from sections where id = %s", (section_id,)
    ).fetchone()
    if row is None:
        return None
    return StoredSection(id=row[0], title=row[1], content=row[2], metadata=row[3], collection=row[4], source=row[5],
                         updated_at=row[6])


_FIND = """
select id, title, content, metadata, collection, source, updated_at from sections s
 where s.collection = %(collection)s
   and (%(ids)s::text[] is null or s.id = any(%(ids)s))
   and (%(metadata)s::jsonb is null or s.metadata @> %(metadata)s)
 order by s.id
"""


def find_sections(conn: psycopg.Connection[Any], collection: str, ids: Sequence[str] | None = None,
                  metadata: Mapping[str, Any] | None = None) -> list[StoredSection]:
    """The sections of ``collection`` with one of ``ids`` (None: any) whose metadata contains
    ``metadata`` (jsonb ``@>``; None: any), in id order: what a framework's get-by-ids and
    delete-by-document read (they speak of a collection's rows by id and by metadata)."""
    params = {"collection": collection, "ids": None if ids is None else list(ids),
              "metadata": None if metadata is None else Jsonb(dict(metadata))}
    return [StoredSection(id=r[0], title=r[1], content=r[2], metadata=r[3], collection=r[4], source=r[5],
                          updated_at=r[6]) for r in conn.execute(_FIND, params).fetchall()]


def delete_sections(conn: psycopg.Connection[Any], section_ids: Sequence[str]) -> int:
    """Delete sections; their vectors and failures go with them (foreign keys cascade)."""
    return conn.execute("delete from sections where id = any(%s)", (list(section_ids),)).rowcount


def foreign_sections(conn: psycopg.Connection[Any], section_ids: Sequence[str], collection: str) -> dict[str, str]:
    """Of these ids, those stored in another collection, with that collection's name."""
    rows = conn.execute("select id, collection from sections where id = any(%s) and collection <> %s",
                        (list(section_ids), collection)).fetchall()
    return {section_id: name for section_id, name in rows}


def _selection_params(selection: Selection) -> dict[str, Any]:
    return {"collection": selection.collection, "everything": selection.everything, "ids": list(selection.ids),
            "prefix": selection.prefix, "files": list(selection.files), "folders": list(selection.folders)}


def selected_ids(conn: psycopg.Connection[Any], selection: Selection) -> list[str]:
    """The ids a selection matches, in id order."""
    query = f"select s.id from sections s where {_SELECTED} order by s.id"
    return [row[0] for row in conn.execute(query, _selection_params(selection)).fetchall()]


def delete_selected(conn: psycopg.Connection[Any], selection: Selection) -> Deleted:
    """Delete what a selection matches, with its vectors, failures and leases, inside the caller's
    transaction; the counts are of what was deleted."""
    params = _selection_params(selection)
    row = conn.execute(
        f"select count(*) from section_embeddings e where e.section_id in (select s.id from sections s where {_SELECTED})",
        params).fetchone()
    sections = conn.execute(f"delete from sections s where {_SELECTED}", params).rowcount
    return Deleted(sections, int(row[0]) if row else 0)


def stored_hashes(conn: psycopg.Connection[Any], model_name: str, section_ids: Sequence[str]) -> dict[str, bytes]:
    """The fingerprint stored with each of these sections' vectors for ``model_name``."""
    rows = conn.execute(
        "select section_id, content_hash from section_embeddings where model_name = %s and section_id = any(%s)",
        (model_name, list(section_ids)),
    ).fetchall()
    return {section_id: bytes(digest) for section_id, digest in rows if digest is not None}


class NamedSource(NamedTuple):
    """A stored file a path names as ingest was given it: ``path`` (absolute, the ``source`` column)
    and ``relative`` (the part under the folder named at ingest, metadata ``source``)."""
    path: str
    relative: str


def sources_named(conn: psycopg.Connection[Any], collection: str, relative: str) -> list[NamedSource]:
    """The stored files of a collection whose path relative to the folder named at ingest is
    ``relative`` or lies under it (a folder), in path order."""
    rows = conn.execute(
        "select distinct s.source, s.metadata->>'source' from sections s where s.collection = %(collection)s"
        " and s.source is not null and (s.metadata->>'source' = %(relative)s"
        " or starts_with(s.metadata->>'source', %(relative)s || '/')) order by 1",
        {"collection": collection, "relative": relative}).fetchall()
    return [NamedSource(path, rel) for path, rel in rows if path.endswith(rel)]


class OtherFile(NamedTuple):
    """A section id read now from one file and stored from another: two folders' files with the
    same path relative to the folder named (two ``index.md``)."""
    id: str
    stored_from: str
    read_from: str


def other_files(conn: psycopg.Connection[Any], read: Sequence[tuple[str, str]], limit: int = 5) -> list[OtherFile]:
    """Of these (id, file) pairs, up to ``limit`` whose id is stored from another file, in any
    collection; a section stored as chunks is found by its first (``id~1``). Primary-key lookups."""
    files = dict(read)
    first_chunks = {f"{section_id}~1": section_id for section_id in files}
    rows = conn.execute("select id, source from sections where id = any(%s) and source is not null",
                        ([*files, *first_chunks],)).fetchall()
    found = []
    for stored_id, stored_from in rows:
        section_id = stored_id if stored_id in files else first_chunks[stored_id]
        if stored_from != files[section_id]:
            found.append(OtherFile(section_id, stored_from, files[section_id]))
    return sorted(found)[:limit]

