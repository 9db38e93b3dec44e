"""Where each model stands: embedded, current, stale, missing, failed, dimensions, indexes.

``stale`` is computed in SQL: the stored fingerprint against ``sections_content_hash`` of the
section as it is now, with the settings each vector was made with, so no section leaves the server.
"""
from __future__ import annotations

from typing import Any, TypedDict

import psycopg
from psycopg import sql

from core.postgres.index import has_index

__all__ = ["ModelStatus", "status"]


class ModelStatus(TypedDict):
    sections: int
    embedded: int
    current: int
    stale: int
    missing: int
    failed: int
    dimensions: list[int]
    indexed: dict[int, bool]
    top_failure_reasons: list[tuple[str, int]]


_EMBEDDED = """
select e.model_name, count(*),
       count(*) filter (where e.content_hash is null or e.content_hash <>
           sections_content_hash(s.title, s.content, e.model_name, e.requested_dimensions, e.long_input)),
       array_agg(distinct e.dimensions)
  from section_embeddings e join sections s on s.id = e.section_id
  {efilt}
 group by e.model_name
"""
_FAILED = "select model_name, count(*) from embedding_failures {filt} group by model_name"
_REASONS = """
select model_name, reason, n from (
    select model_name, reason, count(*) as n,
           row_number() over (partition by model_name order by count(*) desc, reason) as rank
      from embedding_failures {filt} group by model_name, reason) r
 where rank <= %(top)s order by model_name, n desc, reason
"""


def status(conn: psycopg.Connection[Any], model_name: str | None, top_reasons: int) -> dict[str, ModelStatus]:
    """Per model (only ``model_name``'s when given, present even with nothing stored)."""
    filt = sql.SQL("where model_name = %(m)s") if model_name is not None else sql.SQL("")
    efilt = sql.SQL("where e.model_name = %(m)s") if model_name is not None else sql.SQL("")
    params = {"m": model_name, "top": top_reasons}
    with conn.transaction():
        total_row = conn.execute("select count(*) from sections").fetchone()
        sections = int(total_row[0]) if total_row else 0
        embedded = conn.execute(sql.SQL(_EMBEDDED).format(efilt=efilt), params).fetchall()
        failed = {m: int(n) for m, n in conn.execute(sql.SQL(_FAILED).format(filt=filt), params).fetchall()}
        reasons = conn.execute(sql.SQL(_REASONS).format(filt=filt), params).fetchall()
        models = {row[0] for row in embedded} | set(failed)
        if model_name is not None:
            models.add(model_name)
        by_model = {row[0]: row for row in embedded}
        out: dict[str, ModelStatus] = {}
        for model in sorted(models):
            _, count, stale, dims = by_model.get(model, (model, 0, 0, []))
            stored = sorted(int(d) for d in (dims or []) if d is not None)
            out[model] = ModelStatus(
                sections=sections,
                embedded=count,
                current=count - stale,
                stale=stale,
                missing=sections - count,
                failed=failed.get(model, 0),
                dimensions=stored,
                indexed={d: has_index(conn, model, d) for d in stored},
                top_failure_reasons=[(r[1], r[2]) for r in reasons if r[0] == model],
            )
    return out
