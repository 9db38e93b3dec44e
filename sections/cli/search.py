"""The ``sections search`` command: nearest sections, filtered by metadata, collection and source,
by vector or hybrid (full text fused with vector ranking), snippets or whole contents.

``--filter KEY=VALUE`` reads VALUE as JSON when it is JSON (``3``, ``true``, ``null``, ``["a"]``)
and as a string otherwise, so ``--filter lang=en`` and ``--filter draft=false`` both mean what
they say; a string that looks like JSON is quoted (``--filter 'version="3"'``).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any, List, Optional

import typer

from sections.cli.common import (DEFAULT_MODEL, AllCollections, BaseUrl, Collection, DatabaseUrl, Dimensions, JsonOut,
                             Model, Provider, build_service, chosen_collection, open_store,
                             refuse_unknown_model)
from sections.cli.lifecycle import source_scope
from sections.cli.console import fail, out, print_hits
from sections.engine.errors import ProviderFatalError
from sections.records import DEFAULT_COLLECTION, SearchFilter

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
    query: Annotated[str, typer.Argument(
        help="What to look for; - reads one query a line from stdin and answers each as it comes, "
             "with the model loaded once.")],
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
    """The sections nearest to QUERY (cosine similarity, with the model the sections were embedded with).

    With ``--json`` every answer has one shape, ``{"query": …, "hits": […]}``: one document for a
    query given as an argument, one such line per query read from stdin."""
    if not query.strip():
        fail("the query is empty: say what to look for, e.g. sections search \"rotate the logs\" "
             "(or - to read queries from stdin)")
    if k < 1:
        fail(f"-k must be at least 1, not {k}")
    name = chosen_collection(collection, all_collections)
    scope = source_scope(sources, name or DEFAULT_COLLECTION) if sources else None
    where = SearchFilter(metadata_filter(filters or []), scope.files + scope.folders if scope else ())
    if problem := where.problem():
        fail(f"--filter: {problem}")
    refuse_unknown_model(model, base_url, provider)
    with open_store(database_url) as store:
        service = build_service(model, base_url, provider, dimensions)
        for each in ([query] if query != "-" else stdin_queries()):
            try:
                hits = store.search(each, service, k=k, group=group, collection=name, filter=where, hybrid=hybrid,
                                    full=full)
            except ProviderFatalError as error:
                fail(str(error))
            show_hits(each, hits, service.model, json_out, lines=query == "-",
                      unmatched=bool(filters or sources), collection=name)


def stdin_queries() -> Iterator[str]:
    """Queries from stdin, one a line, each handed on as soon as its line is in (blank lines
    skipped): a program can keep the pipe open and ask as it goes, the model staying loaded."""
    for line in iter(sys.stdin.readline, ""):
        if line.strip():
            yield line.strip()


def show_hits(query: str, hits: list[dict[str, Any]], model: str, json_out: bool, *, lines: bool, unmatched: bool,
              collection: Optional[str]) -> None:
    """One query's hits: a table, or JSON of one shape, ``{"query", "hits"}`` (one line per query
    when queries come from stdin); ``unmatched``: a filter was given, so no hits means nothing passed it."""
    if json_out and lines:
        sys.stdout.write(json.dumps({"query": query, "hits": hits}) + "\n")
        sys.stdout.flush()
    elif json_out:
        out.print_json(json.dumps({"query": query, "hits": hits}))
    elif hits:
        print_hits(query, hits)
    elif unmatched:
        out.print("no section " + (f"of collection {collection!r} " if collection is not None else "") + "passes "
                  "--filter/--source", markup=False)
    else:
        where = f" in collection {collection!r}" if collection is not None else ""
        out.print(f"no sections embedded with {model}{where} yet: run `sections ingest PATH --model {model}"
                  + (f" --collection {collection}`" if collection not in (None, DEFAULT_COLLECTION) else "`"),
                  markup=False)
