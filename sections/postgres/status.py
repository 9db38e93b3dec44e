"""Where each model stands, per collection: embedded, current, stale, missing, failed, dimensions, indexes.

``missing_indexes`` names the dimensions that should have an HNSW index by now (as many vectors as
an ingest builds one for) and have none that is valid: a build that failed, was interrupted, or was
never asked for. Their searches read every vector; ``sections index`` builds them.

``stale`` is computed in SQL: the stored fingerprint against ``sections_content_hash`` of the
section as it is now, with the settings each vector was made with, so no section leaves the server.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, TypedDict

import psycopg
from psycopg import sql

from sections.postgres.index import has_index, missing_indexes

__all__ = ["CollectionStatus", "ModelStatus", "WorkerStatus", "analyze_after_writes", "collection_sizes",
           "recent_workers", "status"]

_PLANNED_TABLES = ("sections", "section_embeddings")  # what a search's plan reads


class CollectionStatus(TypedDict):
    sections: int
    embedded: int
    stale: int
    missing: int
    failed: int
    lag_s: float | None  # age of the oldest change still waiting for its vector (None: nothing due)


class WorkerStatus(TypedDict):
    host: str
    pid: int
    command: str
    model: str | None
    collection: str | None
    started_at: str
    last_beat_s: float  # seconds since its last heartbeat
    embedded: int


class ModelStatus(TypedDict):
    sections: int
    embedded: int
    current: int
    stale: int
    missing: int
    failed: int
    dimensions: list[int]
    indexed: dict[int, bool]
    missing_indexes: list[int]
    top_failure_reasons: list[tuple[str, int]]
    collections: dict[str, CollectionStatus]


_SECTIONS = "select s.collection, count(*) from sections s {where} group by s.collection"
_EMBEDDED = """
select s.collection, e.model_name, count(*),
       count(*) filter (where e.content_hash is null or e.content_hash <>
           sections_content_hash(s.title, s.content, e.model_name, e.requested_dimensions, e.long_input)),
       array_agg(distinct e.dimensions)
  from section_embeddings e join sections s on s.id = e.section_id
  {where}
 group by s.collection, e.model_name
"""
_FAILED = """
select s.collection, f.model_name, count(*) from embedding_failures f join sections s on s.id = f.section_id
 {where} group by s.collection, f.model_name
"""
_REASONS = """
select model_name, reason, n from (
    select f.model_name, f.reason, count(*) as n,
           row_number() over (partition by f.model_name order by count(*) desc, f.reason) as rank
      from embedding_failures f join sections s on s.id = f.section_id {where} group by f.model_name, f.reason) r
 where rank <= %(top)s order by model_name, n desc, reason
"""


# Per collection, for one model: how long the oldest due section has waited since it changed.
_LAG = """
select s.collection, extract(epoch from now() - min(s.updated_at))::float8
  from sections s left join section_embeddings e on e.section_id = s.id and e.model_name = %(m)s
 where (e.section_id is null or e.content_hash is null or e.content_hash <>
        sections_content_hash(s.title, s.content, e.model_name, e.requested_dimensions, e.long_input))
   {collection}
 group by s.collection
"""
_WORKERS = """
select host, pid, command, model_name, collection, started_at, extract(epoch from now() - last_beat)::float8, embedded
  from section_workers where last_beat > now() - make_interval(secs => %s) order by started_at
"""
RECENT_S = 120.0


def recent_workers(conn: psycopg.Connection[Any]) -> list[WorkerStatus]:
    """The workers (ingest, watch) whose heartbeat is recent, oldest first."""
    return [WorkerStatus(host=r[0], pid=int(r[1]), command=r[2], model=r[3], collection=r[4],
                         started_at=r[5].isoformat(timespec="seconds"), last_beat_s=round(float(r[6]), 1),
                         embedded=int(r[7]))
            for r in conn.execute(_WORKERS, (RECENT_S,)).fetchall()]


def _where(*conditions: sql.Composable | None) -> sql.Composable:
    kept = [condition for condition in conditions if condition is not None]
    return sql.SQL("where ") + sql.SQL(" and ").join(kept) if kept else sql.SQL("")


def collection_sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Sections per collection."""
    rows = conn.execute(sql.SQL(_SECTIONS).format(where=sql.SQL(""))).fetchall()
    return {name: int(n) for name, n in sorted(rows)}


def status(conn: psycopg.Connection[Any], model_name: str | None, top_reasons: int,
           collection: str | None = None, index_min_rows: int | None = None) -> dict[str, ModelStatus]:
    """Per model (only ``model_name``'s when given, present even with nothing stored), over
    ``collection`` (None: all of them), with the counts of each collection. ``missing_indexes``:
    over every collection (an index serves them all), dimensions with ``index_min_rows`` vectors or
    more (None: any) and no valid index."""
    in_collection = sql.SQL("s.collection = %(c)s") if collection is not None else None
    params = {"m": model_name, "c": collection, "top": top_reasons}
    with conn.transaction():
        sizes = {name: int(n) for name, n in conn.execute(
            sql.SQL(_SECTIONS).format(where=_where(in_collection)), params).fetchall()}
        embedded = conn.execute(sql.SQL(_EMBEDDED).format(where=_where(
            in_collection, sql.SQL("e.model_name = %(m)s") if model_name is not None else None)), params).fetchall()
        model_filter = sql.SQL("f.model_name = %(m)s") if model_name is not None else None
        failed = conn.execute(sql.SQL(_FAILED).format(where=_where(in_collection, model_filter)), params).fetchall()
        reasons = conn.execute(sql.SQL(_REASONS).format(where=_where(in_collection, model_filter)), params).fetchall()
        per: dict[str, dict[str, CollectionStatus]] = defaultdict(dict)
        dims: dict[str, set[int]] = defaultdict(set)

        def counts(model: str, name: str) -> CollectionStatus:
            size = sizes.get(name, 0)
            return per[model].setdefault(name, CollectionStatus(sections=size, embedded=0, stale=0, missing=size, failed=0,
                                                                lag_s=None))

        for name, model, count, stale, stored in embedded:
            row = counts(model, name)
            row["embedded"], row["stale"], row["missing"] = int(count), int(stale), row["sections"] - int(count)
            dims[model] |= {int(d) for d in stored or [] if d is not None}
        for name, model, count in failed:
            counts(model, name)["failed"] = int(count)
        if model_name is not None:
            per.setdefault(model_name, {})  # present even with nothing stored
        out: dict[str, ModelStatus] = {}
        for model in sorted(per):
            for name in sizes:  # every collection counts what this model lacks there
                counts(model, name)
            lag_query = sql.SQL(_LAG).format(collection=sql.SQL("and s.collection = %(c)s") if collection else sql.SQL(""))
            for name, lag in conn.execute(lag_query, {**params, "m": model}).fetchall():
                if name in per[model]:
                    per[model][name]["lag_s"] = round(float(lag), 1)
            rows = list(per[model].values())
            embedded_n, stale_n = _total(rows, "embedded"), _total(rows, "stale")
            stored = sorted(dims[model])
            out[model] = ModelStatus(
                sections=sum(sizes.values()), embedded=embedded_n, current=embedded_n - stale_n, stale=stale_n,
                missing=_total(rows, "missing"), failed=_total(rows, "failed"), dimensions=stored,
                indexed={d: has_index(conn, model, d) for d in stored},
                missing_indexes=missing_indexes(conn, model, index_min_rows),
                top_failure_reasons=[(r[1], r[2]) for r in reasons if r[0] == model],
                collections=dict(sorted(per[model].items())),
            )
    return out


def _total(rows: list[CollectionStatus], key: str) -> int:
    counts: list[int] = [row[key] for row in rows]  # type: ignore[literal-required]
    return sum(counts)


def analyze_after_writes(conn: psycopg.Connection[Any], written: int) -> list[str]:
    """ANALYZE the tables a search reads when ``written`` rows are many next to what the planner
    believes they hold (autovacuum's own rule, 50 + 10 % of its estimate; never analyzed counts as
    empty): until then it plans for a near-empty table and scans every vector instead of using the
    HNSW index, and autovacuum may take minutes to get there. The tables analyzed, by name."""
    if written <= 0:
        return []
    rows = conn.execute("select relname, reltuples from pg_class where oid in "
                        "(select to_regclass(name) from unnest(%s::text[]) name)", (list(_PLANNED_TABLES),)).fetchall()
    stale = [name for name, estimate in rows if written >= 50 + 0.1 * max(0.0, float(estimate))]
    for name in stale:
        conn.execute(sql.SQL("analyze {}").format(sql.Identifier(name)))
    return stale
