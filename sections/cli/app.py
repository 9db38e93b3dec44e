"""The ``sections`` command.

Exit codes: 0 all done; 2 some sections failed (the rest is stored); 1 the run could not proceed
(bad input, unreachable database, no key, quota or auth refused); 130 Ctrl-C, 143 SIGTERM (the
run stops sending, writes what arrived and says ``interrupted: N stored, M not yet``; a second
signal exits at once: ``sections.cli.interrupts``). An index that an ingest could not build is a warning,
not a failure (exit 0): every vector is stored, search works without it, and the next ingest or
``sections index`` (which exits 1 when it fails) builds it. Nothing secret is printed: API keys
never, database URLs with their password masked.
"""
from __future__ import annotations

import atexit
import gc
import json
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any, List, Optional

import typer

from sections.cli.common import (DEFAULT_DB_WAIT_S, DEFAULT_MODEL, AllCollections, BaseUrl, Collection, Commands,
                             Concurrency, DatabaseUrl, DbWait, Dimensions, JsonOut, Model, OwnBudget, Provider, Rpm,
                             StopGrace, Tpm, build_service, chosen_collection, keeping_for, open_store,
                             refuse_unknown_model, set_stop_grace)
from sections.cli.batch import BatchApi, BatchMaxBytes, BatchMaxInputs, Fallback, NoWait, batch_flags, batches, run_batch
from sections.cli.ids import IdPrefix, refuse_other_files, with_prefix
from sections.cli.lifecycle import delete, drop_model, source_scope
from sections.cli.dry_run import dry_run_report, sync_dry_run
from sections.cli.watch import watch
from sections.cli.search import search
from sections.cli.ray_engine import (DEFAULT_BATCH, Engine, EngineOption, RayActors, RayAddress, RayBatch, RayGpus,
                                     check_engine, ray_embedder, runtime)
from sections.records import DEFAULT_COLLECTION
from sections.cli.console import (Reading, err, fail, out, print_hits, print_index_report, print_summary,
                          print_table, stopped_by, tracked)
from sections.cli.progress_bars import IndexBars
from sections.redact import scrub

# The last thing before the interpreter tears down: nothing left needs collecting (stores and
# services are closed, other exit handlers ran first), so its final collections need not walk every
# object the imports made (the SDK's thousands of classes): ~0.2 s of a search's 1 s.
atexit.register(gc.freeze)

# Questions whose answer is a known part of the language reference (pydoc topic), best hit first.
DEMO_QUERIES = {
    "how do I handle an exception and clean up afterwards": "try",
    "loop over the items of a list": "for",
    "define a function with default parameter values": "function",
    "pad a number with zeros inside a formatted string": "formatstrings",
    "anonymous functions with lambda": "lambda",
    "import a module from a package": "import",
}

DEMO_COLLECTION = "demo"  # the demo's Python reference never mixes with the user's own sections

app = Commands(help="Embed document sections in large, fast, safe batches into Postgres/pgvector.",
               no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)

def read_sources(paths: List[str], skip_invalid: bool):
    from sections.reading.sources import SourceError, open_sources

    try:
        return open_sources(paths, skip_invalid=skip_invalid, stdin=sys.stdin)
    except SourceError as error:
        err.print(str(error), markup=False)
        fail(f"invalid input: {error.problem_count} problem(s); nothing was written (--skip-invalid ingests the valid ones)")


def check_chunking(chunk_tokens: Optional[int], chunk_overlap: Optional[int]) -> None:
    """Chunking options refused before any file is read, database opened or model loaded."""
    from sections.reading.chunking import ChunkPolicy

    try:
        ChunkPolicy.check_options(chunk_tokens, chunk_overlap)
    except ValueError as error:
        fail(str(error))


def chunked_source(source, service, chunk_tokens: Optional[int], chunk_overlap: Optional[int],
                   reading: Reading) -> Iterator[Any]:
    """The sections to store: documents cut to the model's window (or ``--chunk-tokens``; then
    records too), counted into ``reading`` as they are made, so the progress bar's total grows
    with the chunks instead of sitting on one huge section."""
    from sections.reading.chunking import ChunkPolicy, chunk_sections

    try:
        policy = ChunkPolicy.for_model(service.limits.max_input_tokens, chunk_tokens, chunk_overlap)
    except ValueError as error:
        fail(str(error))

    def read() -> Iterator[Any]:
        for section in source:
            reading.read += 1
            yield section

    def stored() -> Iterator[Any]:
        for section in chunk_sections(read(), service.tokenizer, policy, every_section=chunk_tokens is not None):
            reading.stored += 1
            yield section

    return stored()


def files_read(source, collection: str):
    """The scope of the cleanup every ingest does (LangChain's indexing API calls it incremental):
    the files read again are the proof of what they hold now, so the sections stored from them
    that this run did not read (a heading renamed or moved, a paragraph deleted) are removed with
    their vectors. Files that vanished are left to ``--prune``; stdin has no file to prove anything."""
    from sections.records import Selection

    return Selection(collection, files=source.files) if source.files else None


def nothing_read(paths: List[str], source) -> str:
    """Why a run read no section at all, in one line."""
    unread = ", ".join(f"{n} {ext or 'without extension'}" for ext, n in source.unread.most_common(5))
    skipped = ", ".join(f"{n} {reason}" for reason, n in source.skipped.most_common())
    why = "; ".join(part for part in (unread and f"files of other types: {unread}",
                                      skipped and f"sections left out: {skipped}") if part)
    return (f"no sections read from {', '.join(paths)}" + (f" ({why})" if why else "")
            + "; supported: .jsonl, .ndjson, .json, .csv, .md, .markdown, .mdx, .txt, .rst")


LEFT_TO_OTHERS_EXIT = 3


@app.callback()
def main() -> None:
    """Embed document sections in large, fast, safe batches into Postgres/pgvector."""


@app.command()
def ingest(
    paths: Annotated[List[str], typer.Argument(help="Files or folders (JSONL, JSON, CSV, Markdown, text); - for stdin.")],
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
    base_url: BaseUrl = None,
    provider: Provider = None,
    dimensions: Dimensions = None,
    concurrency: Concurrency = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    own_budget: OwnBudget = False,
    long_input: Annotated[str, typer.Option(help="Inputs over the model's window: average, truncate or fail.")] = "average",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count tokens and estimate cost; call no API.")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Ingest the valid sections, report the rest.")] = False,
    chunk_tokens: Annotated[Optional[int], typer.Option(
        help="Cut sections longer than this many tokens into chunks (default: the model's window, for "
             "documents; given, records from JSONL/JSON/CSV are cut too).", show_default=False)] = None,
    chunk_overlap: Annotated[Optional[int], typer.Option(
        help="Tokens each chunk repeats from the one before (default: an eighth of a chunk, at most 64).",
        show_default=False)] = None,
    collection: Collection = DEFAULT_COLLECTION,
    prune: Annotated[bool, typer.Option("--prune", help="Afterwards, delete the sections of this collection read "
                                        "from these files and folders before that this run no longer found, files "
                                        "deleted since included (without it, only files read again are cleaned: "
                                        "what they no longer hold is removed).")] = False,
    batch_api: BatchApi = False,
    no_wait: NoWait = False,
    fallback: Fallback = False,
    batch_max_inputs: BatchMaxInputs = None,
    batch_max_bytes: BatchMaxBytes = None,
    id_prefix: IdPrefix = None,
    engine: EngineOption = Engine.PROCESS,
    ray_address: RayAddress = None,
    ray_actors: RayActors = None,
    ray_gpus_per_actor: RayGpus = 0.0,
    ray_batch_size: RayBatch = DEFAULT_BATCH,
    json_out: JsonOut = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every failed section, removed section and "
                                          "unread file.")] = False,
    db_wait: DbWait = DEFAULT_DB_WAIT_S,
    stop_grace: StopGrace = None,
) -> None:
    """Read sections, embed what is new or changed, store it; a rerun embeds nothing twice."""
    name = chosen_collection(collection)
    batch = batch_flags(batch_api, no_wait, fallback, batch_max_inputs, batch_max_bytes)
    check_chunking(chunk_tokens, chunk_overlap)
    check_engine(engine, batch_api, ray_address, ray_actors, ray_gpus_per_actor, ray_batch_size)
    if prune and "-" in paths:
        fail("--prune needs files or folders: sections read from stdin have no source to prune by")
    source = read_sources(paths, skip_invalid)
    if not json_out:
        for problem in source.problems[:20]:
            err.print(f"skipped: {problem}", markup=False)
    if source.count == 0:
        fail(nothing_read(paths, source))
    refuse_unknown_model(model, base_url, provider)
    scope = source_scope(paths, name) if prune else files_read(source, name)
    if scope is not None and source.problem_count:
        err.print(f"{'--prune' if prune else 'removing what the files no longer hold'} skipped: "
                  f"{source.problem_count} input record(s) were invalid, and the sections they held would have "
                  "been removed; fix them and run again", markup=False)
        scope = None
    with open_store(database_url) as store:
        if source.has_documents:  # before a model loads or anything is spent
            refuse_other_files(store, with_prefix(source, id_prefix))
        service = build_service(model, base_url, provider, dimensions, concurrency=concurrency, rpm=rpm, tpm=tpm,
                                long_input=long_input)
        reading = Reading(invalid=source.problem_count, skipped=source.skipped, unread=source.unread)
        sections = chunked_source(with_prefix(source, id_prefix), service, chunk_tokens, chunk_overlap, reading)
        if dry_run:
            return dry_run_report(store, sections, reading, service, json_out, name, scope, verbose)
        if batch is not None:
            run_batch(lambda progress: store.batch_ingest(sections, service, options=batch.options, limits=batch.limits,
                                                          collection=name, prune=scope, on_progress=progress),
                      service, reading, json_out, "the same command", verbose)
        embedder = service
        if engine is Engine.RAY:  # the actors build the service again where they run
            embedder = ray_embedder(service, store, not own_budget, ray_actors, ray_gpus_per_actor, ray_batch_size,
                                    {"concurrency": concurrency, "rpm": rpm, "tpm": tpm})
        elif not own_budget:
            store.share_budget(service)
        with runtime(engine, ray_address), IndexBars(json_out, err) as bars:
            keeping = keeping_for(store, service, db_wait)
            set_stop_grace(service, stop_grace)
            result, elapsed = tracked(lambda progress: store.ingest(sections, embedder, on_progress=progress,
                                                                    collection=name, prune=scope, on_index_progress=bars,
                                                                    keeping=keeping, wait_for_others=not no_wait),
                                      embedder, lambda: source.count + reading.stored - reading.read, reading,
                                      json_out, "ingest", "the same command", store.close, index_bars=bars)
    summary = print_summary(result, embedder, reading, elapsed, json_out=json_out)
    left_to_others(summary, "ingest")
    if verbose and not json_out:
        for section_id, reason in result["errors"].items():
            out.print(f"  {section_id}: {scrub(reason)}", markup=False)
        for section_id in result.get("pruned_ids", []):
            out.print(f"  removed: {section_id}", markup=False)
        for path in source.unread_paths:
            out.print(f"  not read: {path}", markup=False)
    raise typer.Exit(2 if summary["failed"] or summary["invalid"] else 0)


def left_to_others(summary: dict[str, Any], command: str) -> None:
    """``--no-wait`` left sections to another run: not done, so not exit 0 (3: distinct from a
    failure, 2, and an error, 1)."""
    if summary["busy"]:
        err.print(f"left to another run: {summary['busy']:,} sections not stored yet; run {command} again "
                  "without --no-wait to wait for them", markup=False)
        raise typer.Exit(LEFT_TO_OTHERS_EXIT)


@app.command()
def status(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Only this model.")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Only this collection.")] = None,
    database_url: DatabaseUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Collections and models: sections, embedded, stale, missing, failed and the commonest failure reasons."""
    only = chosen_collection(collection) if collection is not None else None
    with open_store(database_url) as store:
        collections = store.collections()
        report = store.status(model, collection=only)
        workers = store.workers()
    if only is not None:
        collections = {only: collections.get(only, 0)}
    if json_out:
        out.print_json(json.dumps({"collections": collections, "models": report, "workers": workers}, default=list))
        return
    if not report and not any(collections.values()):
        out.print("nothing stored yet: run `sections ingest PATH`")
        return
    print_table("collections (sections)", collections)
    for name, row in report.items():  # one small table per model: readable in any terminal width
        print_table(name, {column: row.get(column, "") for column in
                           ("sections", "embedded", "current", "stale", "missing", "failed", "dimensions", "indexed")}
                    | {f"in {c}": f"{n['embedded']:,} embedded, {n['stale']:,} stale, {n['missing']:,} missing, "
                                  f"{n['failed']:,} failed" + (f", oldest change waiting {n['lag_s']:,.0f} s"
                                                                if n["lag_s"] is not None else "")
                       for c, n in row["collections"].items()}
                    | ({"missing index": ", ".join(f"{d:,} dims" for d in row["missing_indexes"])
                        + f" (search reads every vector): sections index --model {name}"}
                       if row["missing_indexes"] else {}))
    for worker in workers:
        out.print(f"  worker {worker['command']} {worker['model'] or ''} {worker['collection'] or ''} on "
                  f"{worker['host']} pid {worker['pid']}: {worker['embedded']:,} embedded, last beat "
                  f"{worker['last_beat_s']:.0f} s ago", markup=False)
    for name, row in report.items():
        for reason, count in row.get("top_failure_reasons", []):
            out.print(f"  {name}: failed x{count}: {scrub(reason)}", markup=False)


@app.command()
def sync(
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
    base_url: BaseUrl = None,
    provider: Provider = None,
    dimensions: Dimensions = None,
    concurrency: Concurrency = None,
    collection: Collection = DEFAULT_COLLECTION,
    all_collections: AllCollections = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be embedded and its cost; call no API.")] = False,
    rpm: Rpm = None,
    tpm: Tpm = None,
    own_budget: OwnBudget = False,
    batch_api: BatchApi = False,
    no_wait: NoWait = False,
    fallback: Fallback = False,
    batch_max_inputs: BatchMaxInputs = None,
    batch_max_bytes: BatchMaxBytes = None,
    json_out: JsonOut = False,
    db_wait: DbWait = DEFAULT_DB_WAIT_S,
    stop_grace: StopGrace = None,
) -> None:
    """Embed every stored section whose vector is missing or stale; safe to run in many processes at once."""
    name = chosen_collection(collection, all_collections)
    batch = batch_flags(batch_api, no_wait, fallback, batch_max_inputs, batch_max_bytes)
    refuse_unknown_model(model, base_url, provider)
    with open_store(database_url) as store:
        service = build_service(model, base_url, provider, dimensions, concurrency=concurrency, rpm=rpm, tpm=tpm)
        if dry_run:
            return sync_dry_run(store, service, name, json_out)
        if batch is not None:
            run_batch(lambda progress: store.batch_sync(service, options=batch.options, limits=batch.limits,
                                                        collection=name, on_progress=progress),
                      service, Reading(), json_out, "sync", count=True)
        if not own_budget:
            store.share_budget(service)
        todo = store.status(service.model, collection=name).get(service.model, {})
        total = int(todo.get("stale", 0)) + int(todo.get("missing", 0))
        reading = Reading(read=total, stored=total)
        keeping = keeping_for(store, service, db_wait)
        set_stop_grace(service, stop_grace)
        result, elapsed = tracked(lambda progress: store.sync(service, on_progress=progress, collection=name,
                                                              keeping=keeping),
                                  service, lambda: total, reading, json_out, "sync", "sync", store.close)
    reading.read = reading.stored = result.get("success_count", 0) + result.get("failed_count", 0)
    summary = print_summary(result, service, reading, elapsed, json_out=json_out, command="sync")
    raise typer.Exit(2 if summary["failed"] else 0)


@app.command()
def index(
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Build a model's missing HNSW indexes; drop those left invalid or of dimensions no longer stored
    (ingest does this itself after large loads)."""
    import psycopg
    from psycopg_pool import PoolTimeout

    with open_store(database_url) as store:
        started = time.perf_counter()
        try:
            with IndexBars(json_out, err) as bars:
                report = store.update_indexes(model, on_progress=bars)
        except (psycopg.Error, PoolTimeout) as error:
            fail(f"{stopped_by(error)} — the HNSW index of {model} was not built; every vector is stored and "
                 "search works without it, reading every vector")
    print_index_report(report, time.perf_counter() - started, json_out)


@app.command()
def demo(
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
) -> None:
    """Ingest Python's own language reference (shipped with Python) and search it."""
    from sections.reading.sample_corpus import pydoc_sections

    sections = pydoc_sections()
    refuse_unknown_model(model, None, None)
    reading = Reading(read=len(sections), stored=len(sections))
    with open_store(database_url) as store:
        service = build_service(model, None, None, None)
        result, elapsed = tracked(lambda progress: store.ingest(sections, service, on_progress=progress,
                                                                collection=DEMO_COLLECTION),
                                  service, lambda: len(sections), reading, False, "demo", "the demo", store.close)
        print_summary(result, service, reading, elapsed, json_out=False)
        for query in DEMO_QUERIES:
            print_hits(query, store.search(query, service, k=3, collection=DEMO_COLLECTION))


app.command()(watch)
app.command()(search)
app.command()(delete)
app.command("drop-model")(drop_model)
app.command()(batches)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def simulate(ctx: typer.Context) -> None:
    """Run an OpenAI-compatible embeddings server on loopback (limits, faults, /stats); --help lists its flags."""
    from sections.simulator import server

    server.main(ctx.args, prog="sections simulate")


if __name__ == "__main__":
    app()
