"""Sections in Postgres: bulk upsert, lookups, deletes, and the fingerprints stored beside vectors.

Each function takes a connection and runs inside the caller's transaction where it writes, so the
pipeline decides what one transaction holds. Writes are a binary COPY into a temporary table and
one ``INSERT … ON CONFLICT``: never a statement per row.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypedDict

import psycopg
from psycopg.types.json import Jsonb

from core.records import Section

__all__ = ["StoredSection", "delete_sections", "get_section", "stored_hashes", "upsert_sections"]

_STAGE = "_sections_stage"
_STAGE_DDL = (
    "set local client_min_messages = warning; "
    f"create temp table if not exists {_STAGE} "
    f"(id text, title text, content text, metadata jsonb) on commit delete rows; delete from {_STAGE}"
)
_COPY = f"copy {_STAGE} (id, title, content, metadata) from stdin (format binary)"
_UPSERT = f"""
insert into sections as s (id, title, content, metadata, updated_at)
select id, title, content, metadata, now() from {_STAGE}
on conflict (id) do update
   set title = excluded.title,
       content = excluded.content,
       metadata = coalesce(excluded.metadata, s.metadata),
       updated_at = excluded.updated_at
 where s.title is distinct from excluded.title
    or s.content is distinct from excluded.content
    or (excluded.metadata is not null and s.metadata is distinct from excluded.metadata)
"""


class StoredSection(TypedDict):
    id: str
    title: str
    content: str
    metadata: Any
    updated_at: datetime


def upsert_sections(conn: psycopg.Connection[Any], rows: Sequence[Section]) -> int:
    """COPY + one upsert, inside the caller's transaction; rows must be unique by id.

    A row whose ``metadata`` is None keeps what is stored; ``updated_at`` moves only when
    something changed. Returns the rows inserted or changed.
    """
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.execute(_STAGE_DDL)
        with cur.copy(_COPY) as copy:
            copy.set_types(["text", "text", "text", "jsonb"])
            for row in rows:
                copy.write_row((row.id, row.title, row.content, None if row.metadata is None else Jsonb(row.metadata)))
        cur.execute(_UPSERT)
        return cur.rowcount


def get_section(conn: psycopg.Connection[Any], section_id: str) -> StoredSection | None:
    row = conn.execute(
        "select id, title, content, metadata, updated_at from sections where id = %s", (section_id,)
    ).fetchone()
    if row is None:
        return None
    return StoredSection(id=row[0], title=row[1], content=row[2], metadata=row[3], updated_at=row[4])


def delete_sections(conn: psycopg.Connection[Any], section_ids: Sequence[str]) -> int:
    """Delete sections; their vectors and failures go with them (foreign keys cascade)."""
    return conn.execute("delete from sections where id = any(%s)", (list(section_ids),)).rowcount


def stored_hashes(conn: psycopg.Connection[Any], model_name: str, section_ids: Sequence[str]) -> dict[str, bytes]:
    """The fingerprint stored with each of these sections' vectors for ``model_name``."""
    rows = conn.execute(
        "select section_id, content_hash from section_embeddings where model_name = %s and section_id = any(%s)",
        (model_name, list(section_ids)),
    ).fetchall()
    return {section_id: bytes(digest) for section_id, digest in rows if digest is not None}
