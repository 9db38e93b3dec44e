"""The ``sections`` command.

Exit codes: 0 all done; 2 some sections failed (the rest is stored); 1 the run could not proceed
(bad input, unreachable database, no key, quota or auth refused). Nothing secret is printed: API
keys never, database URLs with their password masked.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from itertools import islice
from typing import Annotated, Any, List, NoReturn, Optional

import psycopg
import typer
from psycopg_pool import PoolTimeout
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


from core.errors import ProviderFatalError
from core.redact import mask_secrets, mask_url, scrub
from core.usage import estimate_cost_usd

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Questions whose answer is a known part of the language reference (pydoc topic), best hit first.
DEMO_QUERIES = {
    "how do I handle an exception and clean up afterwards": "try",
    "loop over the items of a list": "for",
    "define a function with default parameter values": "function",
    "pad a number with zeros inside a formatted string": "formatstrings",
    "anonymous functions with lambda": "lambda",
    "import a module from a package": "import",
}

app = typer.Typer(help="Embed document sections in large, fast, safe batches into Postgres/pgvector.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Model = Annotated[str, typer.Option("--model", "-m", help="all-MiniLM-L6-v2 (local, the default), a local "
                                    "sentence-transformers folder, or an OpenAI model (needs OPENAI_API_KEY).")]
DatabaseUrl = Annotated[Optional[str], typer.Option(
    "--database-url", help="Postgres/Supabase connection string (default: DATABASE_URL, else the embedded Postgres).",
    show_default=False)]
BaseUrl = Annotated[Optional[str], typer.Option(
    "--base-url", help="Any OpenAI-compatible server (default: OPENAI_BASE_URL).", show_default=False)]
Provider = Annotated[Optional[str], typer.Option("--provider", help="openai or local (default: from the model).")]
Dimensions = Annotated[Optional[int], typer.Option("--dimensions", help="Shorter vectors (text-embedding-3 models).")]
Concurrency = Annotated[Optional[int], typer.Option(help="Requests in flight (default: the provider's).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print a JSON document instead of tables.")]


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(mask_secrets(message))}", markup=True)
    raise typer.Exit(1)


def build_service(model: str, base_url: Optional[str], provider: Optional[str], dimensions: Optional[int],
                  **options: Any):
    from core.embedding_service import EmbeddingService

    try:
        return EmbeddingService(model=model, base_url=base_url, provider=provider, dimensions=dimensions,
                                **{k: v for k, v in options.items() if v is not None})
    except (ValueError, RuntimeError, OSError) as error:
        fail(str(error))


def open_store(database_url: Optional[str]):
    from core.supabase_store import SupabaseStore

    try:
        return SupabaseStore(database_url, connect_timeout=15)
    except Exception as error:  # any reason the database cannot be reached or prepared
        where = mask_url(database_url) if database_url else "the database (DATABASE_URL or the embedded Postgres)"
        message = str(error).strip()  # fail() masks any URL in it
        fail(f"cannot open {where}: {message.splitlines()[0] if message else type(error).__name__}")


def progress_bar(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.1f} sections/s"), TextColumn("{task.fields[tokens]:>10,} tokens"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, disable=quiet, transient=False,
    )


def tracked(run, service, total: int, quiet: bool, label: str, again: str) -> tuple[dict, float]:
    """Call ``run(on_progress)`` (an ingest or a sync) behind a progress bar; returns its result and
    the seconds it took. A stop by the provider or the database prints what was done, then exits 1."""
    started = time.perf_counter()
    with progress_bar(quiet) as bar:
        task = bar.add_task(label, total=total, rate=0.0, tokens=0)

        def on_progress(counts: dict) -> None:
            done = counts["success"] + counts["failed"] + counts["skipped"]
            bar.update(task, completed=done, tokens=counts["tokens"],
                       rate=done / max(1e-9, time.perf_counter() - started))

        try:
            result = run(on_progress)
        except (ProviderFatalError, psycopg.Error, PoolTimeout) as error:
            partial = getattr(error, "result", None) or {}
            print_summary(partial, service, total, 0, time.perf_counter() - started, json_out=False)
            fail(f"{stopped_by(error)} — what was embedded is stored; run {again} again to finish")
    return result, time.perf_counter() - started


def stopped_by(error: BaseException) -> str:
    """What stopped a run, in words that hold no secret."""
    if isinstance(error, ProviderFatalError):
        return str(error)
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"database error: {mask_secrets(first_line)}"


def summary_of(result: dict, service, read: int, invalid: int, elapsed: float) -> dict:
    reasons = Counter(result.get("errors", {}).values()).most_common(5)
    tokens = int(result.get("total_tokens", 0))
    return {
        "model": service.model,
        "read": read,
        "invalid": invalid,
        "unchanged": result.get("skipped_count", 0),
        "embedded": result.get("success_count", 0),
        "failed": result.get("failed_count", 0),
        "failure_reasons": [{"reason": r, "count": n} for r, n in reasons],
        "failed_ids": result.get("failed_ids", [])[:20],
        "tokens": tokens,
        "estimated_cost_usd": round(estimate_cost_usd(service.model, tokens), 6),
        "elapsed_s": round(elapsed, 3),
        "sections_per_s": round(read / elapsed, 1) if elapsed > 0 else None,
    }


def print_summary(result: dict, service, read: int, invalid: int, elapsed: float, *, json_out: bool) -> dict:
    summary = summary_of(result, service, read, invalid, elapsed)
    if json_out:
        out.print_json(json.dumps(summary))
        return summary
    table = Table(title=f"ingest summary ({summary['model']})", show_header=False)
    for label, key in (("read", "read"), ("invalid (skipped)", "invalid"), ("unchanged", "unchanged"),
                       ("embedded", "embedded"), ("failed", "failed"), ("tokens", "tokens")):
        table.add_row(label, f"{summary[key]:,}")
    table.add_row("estimated cost", f"${summary['estimated_cost_usd']:.4f}")
    table.add_row("elapsed", f"{summary['elapsed_s']:.2f} s")
    table.add_row("sections/s", f"{summary['sections_per_s'] or 0:,.1f}")
    out.print(table)
    for item in summary["failure_reasons"]:
        out.print(f"  failed x{item['count']}: {scrub(item['reason'])}")
    return summary


def read_sources(paths: List[str], skip_invalid: bool):
    from core.sources import SourceError, open_sources

    try:
        return open_sources(paths, skip_invalid=skip_invalid, stdin=sys.stdin)
    except SourceError as error:
        err.print(str(error), markup=False)
        fail(f"invalid input: {error.problem_count} problem(s); nothing was written (--skip-invalid ingests the valid ones)")


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
    rpm: Annotated[Optional[float], typer.Option(help="Requests-per-minute budget.")] = None,
    tpm: Annotated[Optional[float], typer.Option(help="Tokens-per-minute budget.")] = None,
    long_input: Annotated[str, typer.Option(help="Inputs over the model's window: average, truncate or fail.")] = "average",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count tokens and estimate cost; call no API.")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Ingest the valid sections, report the rest.")] = False,
    json_out: JsonOut = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every failed section.")] = False,
) -> None:
    """Read sections, embed what is new or changed, store it; a rerun embeds nothing twice."""
    source = read_sources(paths, skip_invalid)
    if not json_out:
        for problem in source.problems[:20]:
            err.print(f"skipped: {problem}", markup=False)
    service = build_service(model, base_url, provider, dimensions, concurrency=concurrency, rpm=rpm, tpm=tpm,
                            long_input=long_input)
    store = open_store(database_url)
    with store:
        if dry_run:
            return dry_run_report(store, source, service, json_out)
        result, elapsed = tracked(lambda progress: store.ingest(source, service, on_progress=progress),
                                  service, source.count, json_out, "ingest", "the same command")
    summary = print_summary(result, service, source.count, source.problem_count, elapsed, json_out=json_out)
    if verbose and not json_out:
        for section_id, reason in result["errors"].items():
            out.print(f"  {section_id}: {scrub(reason)}", markup=False)
    raise typer.Exit(2 if summary["failed"] or summary["invalid"] else 0)


def dry_run_report(store, source, service, json_out: bool) -> None:
    """What an ingest would embed and cost, from the stored fingerprints and exact token counts."""
    from core.fingerprint import split_current

    read = unchanged = to_embed = tokens = 0
    sections = iter(source)
    while batch := list(islice(sections, 1000)):
        read += len(batch)
        split = split_current(batch, service.settings, store.stored_hashes(service.model, [s.id for s in batch]))
        unchanged += split.unchanged
        to_embed += len(split.due)
        tokens += sum(service.tokenizer.count(due.text) for due in split.due)
    report = {"model": service.model, "read": read, "invalid": source.problem_count, "unchanged": unchanged,
              "would_embed": to_embed, "tokens": tokens,
              "estimated_cost_usd": round(estimate_cost_usd(service.model, tokens), 6)}
    if json_out:
        out.print_json(json.dumps(report))
        return
    table = Table(title=f"dry run ({service.model}): nothing sent", show_header=False)
    for key, value in report.items():
        if key != "model":
            table.add_row(key.replace("_", " "), f"${value:.4f}" if key == "estimated_cost_usd" else f"{value:,}")
    out.print(table)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many hits.")] = 10,
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
    base_url: BaseUrl = None,
    provider: Provider = None,
    dimensions: Dimensions = None,
    json_out: JsonOut = False,
) -> None:
    """The sections nearest to QUERY (cosine similarity, with the model the sections were embedded with)."""
    service = build_service(model, base_url, provider, dimensions)
    with open_store(database_url) as store:
        try:
            hits = store.search(query, service, k=k)
        except ProviderFatalError as error:
            fail(str(error))
    if json_out:
        out.print_json(json.dumps(hits))
        return
    if not hits:
        out.print(f"no sections embedded with {service.model} yet: run `sections ingest PATH --model {service.model}`")
        return
    print_hits(query, hits)


def print_hits(query: str, hits: list[dict]) -> None:
    table = Table(title=f"“{query}”")
    for column in ("score", "id", "title", "snippet"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        table.add_row(f"{hit['score']:.3f}", hit["id"], hit["title"] or "", (hit.get("snippet") or "")[:160])
    out.print(table)


@app.command()
def status(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Only this model.")] = None,
    database_url: DatabaseUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Per model: sections, embedded, stale, failed and the commonest failure reasons."""
    with open_store(database_url) as store:
        report = store.status(model)
    if json_out:
        out.print_json(json.dumps(report, default=list))
        return
    if not report:
        out.print("nothing stored yet: run `sections ingest PATH`")
    for name, row in report.items():  # one small table per model: readable in any terminal width
        table = Table(title=name, show_header=False)
        for column in ("sections", "embedded", "current", "stale", "missing", "failed", "dimensions", "indexed"):
            table.add_row(column, _cell(row.get(column, "")))
        out.print(table)
    for name, row in report.items():
        for reason, count in row.get("top_failure_reasons", []):
            out.print(f"  {name}: failed x{count}: {scrub(reason)}", markup=False)


def _cell(value: Any) -> str:
    if isinstance(value, dict):  # {dimensions: indexed?}
        return ", ".join(f"{d}: {'yes' if v else 'no'}" for d, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return ", ".join(map(str, value))
    return str(value)


@app.command()
def sync(
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
    base_url: BaseUrl = None,
    provider: Provider = None,
    dimensions: Dimensions = None,
    concurrency: Concurrency = None,
    json_out: JsonOut = False,
) -> None:
    """Embed every stored section whose vector is missing or stale; safe to run in many processes at once."""
    service = build_service(model, base_url, provider, dimensions, concurrency=concurrency)
    with open_store(database_url) as store:
        todo = store.status(service.model).get(service.model, {})
        total = int(todo.get("stale", 0)) + int(todo.get("missing", 0))
        result, elapsed = tracked(lambda progress: store.sync(service, on_progress=progress),
                                  service, total, json_out, "sync", "sync")
    done = result.get("success_count", 0) + result.get("failed_count", 0)
    summary = print_summary(result, service, done, 0, elapsed, json_out=json_out)
    raise typer.Exit(2 if summary["failed"] else 0)


@app.command()
def index(
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
) -> None:
    """Build the HNSW index for a model's vectors (ingest does this itself after large loads)."""
    with open_store(database_url) as store:
        started = time.perf_counter()
        names = store.build_index(model)
    out.print(f"indexed {model}: {', '.join(names) or 'nothing stored yet'} ({time.perf_counter() - started:.1f} s)")


@app.command()
def demo(
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
) -> None:
    """Ingest Python's own language reference (shipped with Python) and search it."""
    from core.sample_corpus import pydoc_sections

    sections = pydoc_sections()
    service = build_service(model, None, None, None)
    with open_store(database_url) as store:
        result, elapsed = tracked(lambda progress: store.ingest(sections, service, on_progress=progress),
                                  service, len(sections), False, "demo", "the demo")
        print_summary(result, service, len(sections), 0, elapsed, json_out=False)
        for query in DEMO_QUERIES:
            print_hits(query, store.search(query, service, k=3))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def simulate(ctx: typer.Context) -> None:
    """Run an OpenAI-compatible embeddings server on loopback (limits, faults, /stats); --help lists its flags."""
    from core import simulator

    simulator.main(ctx.args, prog="sections simulate")


if __name__ == "__main__":
    app()
