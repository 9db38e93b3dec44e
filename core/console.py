"""What the ``sections`` command prints: errors, the progress bar, summaries, hits, status.

Kept apart from the commands (``core.cli``) so each command reads as what it does. Everything that
reaches the terminal passes ``core.redact`` first: no API key, no database password, whatever the
shape of the message.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import psycopg
import typer
from psycopg_pool import PoolTimeout
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from core.errors import ProviderFatalError
from core.redact import mask_secrets, scrub
from core.usage import estimate_cost_usd

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Reading:
    """What the inputs gave, for the summary: sections read, chunks made, what was left out."""

    read: int = 0  # sections read from the inputs
    invalid: int = 0  # input records refused (with --skip-invalid)
    stored: int = 0  # sections handed to the store: chunks count one each
    skipped: Counter[str] = field(default_factory=Counter)  # sections not stored, by reason
    unread: Counter[str] = field(default_factory=Counter)  # files in folders not read, by extension

    @property
    def chunked(self) -> bool:
        return self.stored != self.read


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(mask_secrets(message))}", markup=True)
    raise typer.Exit(1)


def progress_bar(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.1f} sections/s"), TextColumn("{task.fields[tokens]:>10,} tokens"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, disable=quiet, transient=False,
    )


def tracked(run: Callable[[Callable[[Any], None]], dict[str, Any]], service: Any, total: Callable[[], int],
            reading: Reading, quiet: bool, label: str, again: str) -> tuple[dict[str, Any], float]:
    """Call ``run(on_progress)`` (an ingest or a sync) behind a progress bar; returns its result and
    the seconds it took. ``total()`` is asked at every update: chunking a long section adds to it
    as the run reads on, so the bar counts what is really embedded. A stop by the provider or the
    database prints what was done, then exits 1."""
    started = time.perf_counter()
    with progress_bar(quiet) as bar:
        task = bar.add_task(label, total=total(), rate=0.0, tokens=0)

        def on_progress(counts: Any) -> None:
            done = counts["success"] + counts["failed"] + counts["skipped"]
            bar.update(task, total=max(total(), done), completed=done, tokens=counts["tokens"],
                       rate=done / max(1e-9, time.perf_counter() - started))

        try:
            result = run(on_progress)
        except (ProviderFatalError, psycopg.Error, PoolTimeout) as error:
            partial = getattr(error, "result", None) or {}
            print_summary(partial, service, reading, time.perf_counter() - started, json_out=False)
            fail(f"{stopped_by(error)} — what was embedded is stored; run {again} again to finish")
    return result, time.perf_counter() - started


def stopped_by(error: BaseException) -> str:
    """What stopped a run, in words that hold no secret."""
    if isinstance(error, ProviderFatalError):
        return str(error)
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"database error: {mask_secrets(first_line)}"


def summary_of(result: dict[str, Any], service: Any, reading: Reading, elapsed: float) -> dict[str, Any]:
    reasons = Counter(result.get("errors", {}).values()).most_common(5)
    tokens = int(result.get("total_tokens", 0))
    return {
        "model": service.model,
        "read": reading.read,
        "chunks": reading.stored,
        "invalid": reading.invalid,
        "skipped": [{"reason": r, "count": n} for r, n in reading.skipped.most_common()],
        "files_not_read": dict(sorted(reading.unread.items())),
        "unchanged": result.get("skipped_count", 0),
        "embedded": result.get("success_count", 0),
        "busy": result.get("busy_count", 0),
        "pruned": result.get("pruned_count"),
        "failed": result.get("failed_count", 0),
        "failure_reasons": [{"reason": r, "count": n} for r, n in reasons],
        "failed_ids": result.get("failed_ids", [])[:20],
        "tokens": tokens,
        "estimated_cost_usd": round(estimate_cost_usd(service.model, tokens), 6),
        "elapsed_s": round(elapsed, 3),
        "sections_per_s": round(reading.stored / elapsed, 1) if elapsed > 0 else None,
    }


def print_summary(result: dict[str, Any], service: Any, reading: Reading, elapsed: float, *,
                  json_out: bool) -> dict[str, Any]:
    summary = summary_of(result, service, reading, elapsed)
    if json_out:
        out.print_json(json.dumps(summary))
        return summary
    table = Table(title=f"ingest summary ({summary['model']})", show_header=False)
    rows = [("read", "read")] + ([("stored (after chunking)", "chunks")] if reading.chunked else [])
    rows += [("invalid (skipped)", "invalid"), ("unchanged", "unchanged"), ("embedded", "embedded"),
             ("failed", "failed"), ("tokens", "tokens")]
    rows += [("left to another run embedding them", "busy")] if summary["busy"] else []
    rows += [("pruned (gone from the sources)", "pruned")] if summary["pruned"] is not None else []
    for label, key in rows:
        table.add_row(label, f"{summary[key]:,}")
    for item in summary["skipped"]:
        table.add_row(f"skipped: {item['reason']}", f"{item['count']:,}")
    if reading.unread:
        table.add_row("files not read", ", ".join(f"{ext or '(none)'} {n:,}" for ext, n in reading.unread.most_common()))
    table.add_row("estimated cost", f"${summary['estimated_cost_usd']:.4f}")
    table.add_row("elapsed", f"{summary['elapsed_s']:.2f} s")
    table.add_row("sections/s", f"{summary['sections_per_s'] or 0:,.1f}")
    out.print(table)
    for item in summary["failure_reasons"]:
        out.print(f"  failed x{item['count']}: {scrub(item['reason'])}")
    return summary


def print_hits(query: str, hits: list[dict[str, Any]]) -> None:
    """A table of hits: the cosine similarity (and, from a hybrid search, the fused score that
    ordered them), where each was read, and a snippet, or the whole content when the hits carry it."""
    fused = any("rrf_score" in hit for hit in hits)
    full = any("content" in hit for hit in hits)
    table = Table(title=f"“{query}”")
    for column in ("score", *(("rrf",) if fused else ()), "id", "title", "where", "content" if full else "snippet"):
        table.add_column(column, overflow="fold")
    for hit in hits:  # Text: ids, titles and contents are shown as written, never read as markup
        table.add_row(f"{hit['score']:.3f}", *((f"{hit.get('rrf_score', 0):.4f}",) if fused else ()),
                      Text(hit["id"]), Text(hit["title"] or ""), Text(_where(hit)),
                      Text(hit.get("content", "") if full else (hit.get("snippet") or "")[:160]))
    out.print(table)


def _where(hit: dict[str, Any]) -> str:
    """Where a hit was read: ``file:line``, and which chunk of its section it is."""
    found = hit.get("metadata")
    metadata: dict[str, Any] = found if isinstance(found, dict) else {}
    place = str(metadata.get("source") or "")
    if place and metadata.get("line"):
        place += f":{metadata['line']}"
    if hit.get("parent") and metadata.get("chunks"):
        place += f" (part {metadata.get('chunk')}/{metadata['chunks']})"
    return place


def print_table(title: str, rows: dict[str, Any]) -> None:
    """A two-column table of labels and values: readable in any terminal width."""
    table = Table(title=title, show_header=False)
    for label, value in rows.items():
        table.add_row(label, _cell(value))
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, dict):  # {dimensions: indexed?}
        return ", ".join(f"{d}: {'yes' if v else 'no'}" for d, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return ", ".join(map(str, value))
    return str(value)
