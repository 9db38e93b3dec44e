"""The ``sections search`` command: nearest sections, filtered by metadata, collection and source,
by vector or hybrid (full text fused with vector ranking), snippets or whole contents.

``--filter KEY=VALUE`` reads VALUE as JSON when it is JSON (``3``, ``true``, ``null``, ``["a"]``)
and as a string otherwise, so ``--filter lang=en`` and ``--filter draft=false`` both mean what
they say; a string that looks like JSON is quoted (``--filter 'version="3"'``).
"""
from __future__ import annotations

import json
from typing import Annotated, Any, List, Optional

import typer

from core.cli_common import (DEFAULT_MODEL, AllCollections, BaseUrl, Collection, DatabaseUrl, Dimensions, JsonOut,
                             Model, Provider, build_service, chosen_collection, open_store)
from core.cli_lifecycle import source_scope
from core.console import fail, out, print_hits
from core.errors import ProviderFatalError
from core.records import DEFAULT_COLLECTION, SearchFilter

__all__ = ["metadata_filter", "search"]


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # NaN and Infinity: Python reads them, Postgres does not


def metadata_filter(items: List[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as the metadata a section must contain; a one-line error for a bad one."""
    found: dict[str, Any] = {}
    for item in items:
        key, equals, raw = item.partition("=")
        if not equals or not key.strip():
            fail(f"--filter {item!r}: expected KEY=VALUE, e.g. --filter lang=en")
        if key in found:
            fail(f"--filter: key {key!r} given twice; give it once (a JSON list, KEY='[\"a\",\"b\"]', "
                 "matches metadata whose list holds both)")
        try:
            found[key] = json.loads(raw, parse_constant=_not_json)
        except ValueError:
            found[key] = raw
    return found


def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many hits.")] = 10,
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
    base_url: BaseUrl = None,
    provider: Provider = None,
    dimensions: Dimensions = None,
    group: Annotated[bool, typer.Option(
        "--group/--no-group", help="One hit per section: the best of its chunks (--no-group lists every chunk).")] = True,
    collection: Collection = DEFAULT_COLLECTION,
    all_collections: AllCollections = False,
    filters: Annotated[Optional[List[str]], typer.Option(
        "--filter", metavar="KEY=VALUE", show_default=False,
        help="Only sections whose metadata has KEY equal to VALUE (JSON if it parses, else a string); "
             "repeatable, all must hold.")] = None,
    sources: Annotated[Optional[List[str]], typer.Option(
        "--source", metavar="PATH", help="Only sections read from this file or folder (repeatable).",
        show_default=False)] = None,
    hybrid: Annotated[bool, typer.Option(
        "--hybrid", help="Rank by the query's words (Postgres full text) and by meaning together (reciprocal "
                         "rank fusion).")] = False,
    full: Annotated[bool, typer.Option("--full", help="Show each hit's whole content, not a snippet.")] = False,
    json_out: JsonOut = False,
) -> None:
    """The sections nearest to QUERY (cosine similarity, with the model the sections were embedded with)."""
    name = chosen_collection(collection, all_collections)
    scope = source_scope(sources, name or DEFAULT_COLLECTION) if sources else None
    where = SearchFilter(metadata_filter(filters or []), scope.files + scope.folders if scope else ())
    if problem := where.problem():
        fail(f"--filter: {problem}")
    service = build_service(model, base_url, provider, dimensions)
    with open_store(database_url) as store:
        try:
            hits = store.search(query, service, k=k, group=group, collection=name, filter=where, hybrid=hybrid,
                                full=full)
        except ProviderFatalError as error:
            fail(str(error))
    if json_out:
        out.print_json(json.dumps(hits))
    elif hits:
        print_hits(query, hits)
    elif filters or sources:
        out.print("no section " + (f"of collection {name!r} " if name is not None else "") + "passes "
                  "--filter/--source", markup=False)
    else:
        where_ = f" in collection {name!r}" if name is not None else ""
        out.print(f"no sections embedded with {service.model}{where_} yet: run `sections ingest PATH "
                  f"--model {service.model}" + (f" --collection {name}`" if name not in (None, DEFAULT_COLLECTION) else "`"),
                  markup=False)
