"""What the ``sections`` command prints: errors, a run behind its progress bar, summaries, hits, status.

Kept apart from the commands (``sections.cli.app``) so each command reads as what it does. Everything that
reaches the terminal passes ``sections.redact`` first: no API key, no database password, whatever the
shape of the message. A database error, wherever a command meets it, is one line and exit 1
(``database_errors_in_one_line``, which ``cli_common.Commands`` puts around every command).
"""
from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, ParamSpec, TypeVar

import psycopg
import typer
from psycopg_pool import PoolTimeout
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sections.engine.errors import Interrupted, ProviderFatalError
from sections.pipeline.outage import DatabaseAway
from sections.postgres.database import raised_in_psycopg
from sections.cli.interrupts import Signals, leave
from sections.cli.progress_bars import IndexBars, RecentRate, progress_bar
from sections.redact import mask_secrets, scrub
from sections.engine.usage import estimate_cost_usd

P = ParamSpec("P")
R = TypeVar("R")

HEADER_CHARS = 100  # the most of a query a table's title repeats

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


def tracked(run: Callable[[Callable[[Any], None]], dict[str, Any]], service: Any, total: Callable[[], int],
            reading: Reading, quiet: bool, label: str, again: str,
            release: Callable[[], None], index_bars: IndexBars | None = None) -> tuple[dict[str, Any], float]:
    """Call ``run(on_progress)`` (an ingest or a sync) behind a progress bar; returns its result and
    the seconds it took. ``total()`` is asked at every update: chunking a long section adds to it
    as the run reads on, so the bar counts what is really embedded. A stop by the provider or the
    database prints what was done, then (after the bar's last state: the error is the last line)
    exits 1. Ctrl-C or SIGTERM stops the run (``sections.cli.interrupts``): what arrived is written, the
    summary and ``interrupted: N stored, M not yet`` are printed, ``release()`` closes what the
    command holds, and the process exits 130 or 143; a second signal exits at once with the same
    line. ``index_bars``: the run's index builds show there."""
    started = time.perf_counter()
    latest = {"success": 0, "failed": 0, "skipped": 0}  # the last counts reported: committed ones

    def interrupted_line(counts: dict[str, int]) -> str:
        done = counts["success"] + counts["failed"] + counts["skipped"]
        lost = counts.get("paid_not_kept", 0)
        return (f"interrupted: {counts['success']:,} stored, {max(0, total() - done):,} not yet; "
                f"run {again} again to finish"
                + (f"\nof the not yet, {lost:,} were paid for but not kept (in flight past --stop-grace)" if lost else ""))

    with Signals(service.stop_requested.set, lambda: interrupted_line(latest), release) as signals:
        stopped = False
        paid_not_kept = 0  # inputs sent whose replies did not arrive within the grace
        failure: str | None = None
        partial: dict[str, Any] = {}
        rate = RecentRate()
        rate.add(0)
        with progress_bar(quiet, rate, err) as bar:
            task = bar.add_task(label, total=total(), tokens=0)
            if index_bars is not None:
                index_bars.before = bar.stop

            def on_progress(counts: Any) -> None:
                latest.update(success=counts["success"], failed=counts["failed"], skipped=counts["skipped"])
                done = counts["success"] + counts["failed"] + counts["skipped"] + counts["pending"]
                rate.add(done)
                waiting = counts.get("waiting", 0)
                bar.update(task, total=max(total(), done), completed=done, tokens=counts["tokens"],
                           description=f"waiting for another run: {waiting:,}" if waiting else label)

            try:
                result = run(on_progress)
            except Interrupted as error:
                result, stopped = getattr(error, "result", None) or {}, True
                billed = getattr(service, "provider_name", None) != "local"  # a local model bills nothing
                paid_not_kept = error.abandoned_inputs if billed else 0
            except Exception as error:
                failure = (mask_secrets(str(error)) if isinstance(error, (ProviderFatalError, DatabaseAway))
                           else database_problem(error))
                if failure is None:
                    raise
                partial = getattr(error, "result", None) or {}
        if failure is not None:  # after the bar's last state: the error is the last line
            print_summary(partial, service, reading, time.perf_counter() - started, json_out=False, command=label)
            fail(f"{failure} — what was embedded is stored; run {again} again to finish")
        elapsed = time.perf_counter() - started
        if stopped or signals.received is not None:  # a signal ends the command, even after a finished run
            print_summary(result, service, reading, elapsed, json_out=quiet, command=label)
            err.print(interrupted_line({"success": result.get("success_count", 0),
                                        "failed": result.get("failed_count", 0),
                                        "skipped": result.get("skipped_count", 0),
                                        "paid_not_kept": paid_not_kept}), markup=False)
            signals.said = True
            try:
                release()
            except Exception:  # what was paid for is committed: closing must not hold the exit back
                pass
            leave(signals.exit_code)
    return result, elapsed


def stopped_by(error: BaseException) -> str:
    """What stopped a run, in words that hold no secret."""
    if isinstance(error, (ProviderFatalError, DatabaseAway)):
        return mask_secrets(str(error))
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return database_problem(error) or mask_secrets(first_line)


def database_problem(error: BaseException) -> str | None:
    """``database error: …`` in one line that holds no secret, for an error of the database or of
    psycopg talking to it; None for any other error.

    psycopg does not always raise a ``psycopg.Error``: a server connection that a pooler (pgbouncer)
    drops in the middle of a COPY surfaces as ``ValueError: too many values to unpack`` from
    psycopg's COPY code. So an exception raised inside psycopg or psycopg_pool counts too.
    """
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, (psycopg.Error, PoolTimeout)):
        return f"database error: {mask_secrets(first_line)}"
    if isinstance(error, Exception) and raised_in_psycopg(error):
        return (f"database error: psycopg stopped in the middle of a command ({type(error).__name__}: "
                f"{mask_secrets(first_line)}), as it does when the server or a pooler drops the connection")
    return None


_SILENT = logging.NullHandler()


def database_errors_in_one_line(command: Callable[P, R]) -> Callable[P, R]:
    """``command``, with any database error it meets printed as one line (exit 1), never a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        # psycopg_pool logs the broken connections it discards; with no logging set up, Python
        # would print those lines too, after the one line that says what happened.
        logging.getLogger("psycopg").addHandler(_SILENT)
        try:
            return command(*args, **kwargs)
        except Exception as error:
            problem = database_problem(error)
            if problem is None:
                raise
            fail(problem)

    return run


def summary_of(result: dict[str, Any], service: Any, reading: Reading, elapsed: float) -> dict[str, Any]:
    reasons = Counter(result.get("errors", {}).values()).most_common(5)
    tokens = int(result.get("total_tokens", 0))
    batch_tokens = int(result.get("batch_tokens", 0))  # of them, billed through the Batch API (--batch-api)
    worked = int(result.get("success_count", 0)) + int(result.get("failed_count", 0))
    return {
        "model": service.model,
        "read": reading.read,
        "chunks": reading.stored,
        "invalid": reading.invalid,
        "skipped": [{"reason": r, "count": n} for r, n in reading.skipped.most_common()],
        "files_not_read": dict(sorted(reading.unread.items())),
        "unchanged": result.get("skipped_count", 0) - result.get("busy_count", 0),  # so the counts add up
        "embedded": result.get("success_count", 0),
        "busy": result.get("busy_count", 0),
        "pruned": result.get("pruned_count"),
        "failed": result.get("failed_count", 0),
        "failure_reasons": [{"reason": r, "count": n} for r, n in reasons],
        "failed_ids": result.get("failed_ids", [])[:20],
        "tokens": tokens,
        "index_error": result.get("index_error"),
        "estimated_cost_usd": round(estimate_cost_usd(service.model, tokens - batch_tokens)
                                    + estimate_cost_usd(service.model, batch_tokens, batch=True), 6),
        "sync_cost_usd": round(estimate_cost_usd(service.model, tokens), 6),  # the same tokens at each price
        "batch_cost_usd": round(estimate_cost_usd(service.model, tokens, batch=True), 6),
        "elapsed_s": round(elapsed, 3),
        # what this run embedded (or tried to): unchanged sections cost nothing and would make a
        # run that did nothing look fast
        "sections_per_s": round(worked / elapsed, 1) if elapsed > 0 else None,
    }


def print_summary(result: dict[str, Any], service: Any, reading: Reading, elapsed: float, *,
                  json_out: bool, command: str = "ingest") -> dict[str, Any]:
    summary = summary_of(result, service, reading, elapsed)
    if json_out:
        out.print_json(json.dumps(summary))
        index_warning(summary)
        return summary
    table = Table(title=f"{command} summary ({summary['model']})", show_header=False)
    rows = [("read", "read")] + ([("stored (after chunking)", "chunks")] if reading.chunked else [])
    rows += [("invalid (skipped)", "invalid"), ("unchanged", "unchanged"), ("embedded", "embedded"),
             ("failed", "failed"), ("tokens", "tokens")]
    rows += [("left to another run (not stored yet)", "busy")] if summary["busy"] else []
    rows += [("removed (no longer in their files)", "pruned")] if summary["pruned"] is not None else []
    for label, key in rows:
        table.add_row(label, f"{summary[key]:,}")
    for item in summary["skipped"]:
        table.add_row(f"skipped: {item['reason']}", f"{item['count']:,}")
    if reading.unread:
        table.add_row("files not read", ", ".join(f"{ext or '(none)'} {n:,}" for ext, n in reading.unread.most_common()))
    table.add_row("estimated cost", f"${summary['estimated_cost_usd']:.4f}")
    table.add_row("price: synchronous | Batch API", f"${summary['sync_cost_usd']:.4f} | ${summary['batch_cost_usd']:.4f}")
    table.add_row("elapsed", f"{summary['elapsed_s']:.2f} s")
    table.add_row("sections/s (embedded or failed)", f"{summary['sections_per_s'] or 0:,.1f}")
    out.print(table)
    for item in summary["failure_reasons"]:
        out.print(f"  failed x{item['count']}: {scrub(item['reason'])}")
    index_warning(summary)
    return summary


def index_warning(summary: dict[str, Any]) -> None:
    """A failed index build after a run: not the run's failure (every vector is stored), one line."""
    if summary["index_error"]:
        err.print(f"warning: the HNSW index was not built ({scrub(summary['index_error'])}); every vector is "
                  f"stored and search works, reading every vector; `sections index --model {summary['model']}` "
                  "builds it, and so does the next ingest", markup=False)


def print_index_report(report: Any, elapsed: float, json_out: bool) -> None:
    """What ``sections index`` did (an ``IndexReport``): the indexes, each build, each drop, notes."""
    if json_out:
        out.print_json(json.dumps({"model": report.model, "indexes": report.indexes,
                                   "built": [built._asdict() for built in report.built],
                                   "dropped_invalid": report.dropped_invalid, "dropped_stale": report.dropped_stale,
                                   "unindexable": report.unindexable, "notes": report.notes,
                                   "elapsed_s": round(elapsed, 3)}))
        return
    out.print(f"indexed {report.model}: {', '.join(report.indexes) or 'nothing stored yet'} ({elapsed:.1f} s)",
              markup=False)
    for built in report.built:
        out.print(f"  built {built.name}: {built.rows:,} vectors of {built.dimensions:,} dimensions in "
                  f"{built.seconds:.1f} s (maintenance_work_mem {built.memory}, up to {built.workers} parallel workers)",
                  markup=False)
    for name in report.dropped_invalid:
        out.print(f"  dropped {name}: left invalid by a build that did not finish", markup=False)
    for name in report.dropped_stale:
        out.print(f"  dropped {name}: the model stores no vectors of its dimension any more", markup=False)
    for dims in report.unindexable:
        out.print(f"  {dims:,} dimensions: this pgvector cannot index them; search reads every vector", markup=False)
    for note in report.notes:
        err.print(f"note: {scrub(note)}", markup=False)


def print_hits(query: str, hits: list[dict[str, Any]]) -> None:
    """A table of hits: the cosine similarity (and, from a hybrid search, the fused score that
    ordered them), where each was read, and a snippet, or the whole content when the hits carry it."""
    fused = any("rrf_score" in hit for hit in hits)
    full = any("content" in hit for hit in hits)
    table = Table(title=f"“{shortened(query)}”")
    for column in ("score", *(("rrf",) if fused else ()), "id", "title", "where", "content" if full else "snippet"):
        table.add_column(column, overflow="fold")
    for hit in hits:  # Text: ids, titles and contents are shown as written, never read as markup
        table.add_row(f"{hit['score']:.3f}", *((f"{hit.get('rrf_score', 0):.4f}",) if fused else ()),
                      Text(hit["id"]), Text(hit["title"] or ""), Text(_where(hit)),
                      Text(hit.get("content", "") if full else (hit.get("snippet") or "")[:160]))
    out.print(table)


def shortened(text: str, limit: int = HEADER_CHARS) -> str:
    """One line of at most ``limit`` characters: a query read from a pipe can be a whole file,
    and a header that repeats a megabyte hides the hits under it."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


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
