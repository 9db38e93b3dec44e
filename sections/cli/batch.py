"""``--batch-api`` on ``sections ingest``/``sync``, and ``sections batches``: embedding through the Batch API.

A run submits its jobs (each recorded in the database before anyone waits on it), then waits with
a progress bar fed by the jobs' request counts, polling less often while nothing moves; a stop of
any kind leaves the jobs recorded and running, and a rerun (or ``sections batches --collect``)
picks them up. ``sections batches`` lists the jobs; each one knows its model, settings and
endpoint, so collecting or cancelling needs no other flag.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Optional

import psycopg
import typer
from psycopg_pool import PoolTimeout
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sections.cli.common import DatabaseUrl, JsonOut, build_service, open_store
from sections.cli.console import Reading, err, fail, out, print_summary, print_table, stopped_by, summary_of
from sections.engine.errors import ProviderError
from sections.redact import scrub
from sections.engine.usage import estimate_cost_usd

if TYPE_CHECKING:  # imported when a batch runs: every command, a search too, loads this module
    from sections.batch.records import BatchLimits, BatchProgress, JobRecord
    from sections.pipeline.batch import BatchOptions

__all__ = ["BatchApi", "BatchFlags", "BatchMaxBytes", "BatchMaxInputs", "Fallback", "NoWait", "batch_flags", "batches",
           "run_batch"]

BatchApi = Annotated[bool, typer.Option(
    "--batch-api", help="Embed through OpenAI's Batch API: half the price and a separate rate-limit pool; results "
                        "within 24 h, usually minutes. Jobs are recorded first: a rerun resumes them.")]
NoWait = Annotated[bool, typer.Option(
    "--no-wait", help="Do not wait for others: leave the sections another run is embedding to it and exit 3 saying "
                      "how many are left (by default a run waits for them, and takes over those whose run died); "
                      "with --batch-api, submit the jobs and exit: a rerun or `sections batches --collect` writes "
                      "their results.")]
Fallback = Annotated[bool, typer.Option(
    "--fallback", help="With --batch-api: embed what a job did not deliver (expired, failed) synchronously, at the "
                       "full price, instead of in a new job.")]
BatchMaxInputs = Annotated[Optional[int], typer.Option(
    help="With --batch-api: embedding inputs per batch file (default OpenAI's 50,000).", show_default=False)]
BatchMaxBytes = Annotated[Optional[int], typer.Option(
    help="With --batch-api: bytes per batch file (default OpenAI's 200 MB).", show_default=False)]


@dataclass(frozen=True, slots=True)
class BatchFlags:
    options: BatchOptions
    limits: BatchLimits


def batch_flags(batch_api: bool, no_wait: bool, fallback: bool, max_inputs: Optional[int],
                max_bytes: Optional[int]) -> BatchFlags | None:
    """The batch options asked for (None: a synchronous run), or a one-line error for a bad mix."""
    if not batch_api:
        for given, flag in ((fallback, "--fallback"), (max_inputs is not None,
                            "--batch-max-inputs"), (max_bytes is not None, "--batch-max-bytes")):
            if given:
                fail(f"{flag} needs --batch-api")
        return None
    from sections.batch.records import BatchLimits
    from sections.pipeline.batch import BatchOptions

    defaults = BatchLimits()
    try:
        limits = BatchLimits(defaults.max_requests, defaults.max_inputs if max_inputs is None else max_inputs,
                             defaults.max_bytes if max_bytes is None else max_bytes)
    except ValueError:
        fail("--batch-max-inputs and --batch-max-bytes must be positive")
    return BatchFlags(BatchOptions(wait=not no_wait, fallback=fallback), limits)


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("requests  {task.fields[info]}"), TimeElapsedColumn(), console=err, disable=quiet)


def _tracked(run: Callable[[Callable[[BatchProgress], None]], dict[str, Any]], service: Any, reading: Reading,
             quiet: bool, again: str) -> tuple[dict[str, Any], float]:
    """Run behind a progress bar of the jobs' requests; a stop prints what was done and how to go on."""
    started = time.perf_counter()
    stop: BaseException | None = None
    with _progress(quiet) as bar:
        task = bar.add_task("batch: reading", total=None, info="")

        def on_progress(progress: BatchProgress) -> None:
            statuses = ", ".join(f"{n} {status}" for status, n in sorted(progress.statuses.items()))
            bar.update(task, description=f"batch: {progress.phase}", total=progress.requests_total or None,
                       completed=progress.requests_done,
                       info=f"{progress.sections:,} sections submitted; {progress.jobs} job(s) {statuses}".strip())

        try:
            result = run(on_progress)
        except (ProviderError, psycopg.Error, PoolTimeout, KeyboardInterrupt, ValueError) as error:
            stop = error
    if isinstance(stop, ValueError):  # the Batch API needs an OpenAI-compatible provider
        fail(str(stop))
    if stop is not None:
        partial = getattr(stop, "result", None) or {}
        if partial:
            _print(partial, service, reading, time.perf_counter() - started, False)
        why = "interrupted" if isinstance(stop, KeyboardInterrupt) else stopped_by(stop)
        running = int(partial.get("jobs_open", 0))
        fail(f"{why} — {running} batch job(s) are recorded and keep running: run {again} again, or "
             "`sections batches --collect`, to write their results" if running else
             f"{why} — no batch job is left running; run {again} again to go on")
    return result, time.perf_counter() - started


_JOB_ROWS = {  # summary key: its label in the table
    "jobs_submitted": "jobs submitted", "jobs_collected": "jobs collected", "jobs_open": "jobs still running",
    "sections_pending": "sections in running jobs", "changed_count": "changed while their job ran (not overwritten)",
    "retried_count": "sent again in a new job", "cancelled_count": "cancelled (still due)",
    "submitted_tokens": "tokens submitted",
}


def _report(result: dict[str, Any], service: Any, reading: Reading, elapsed: float) -> dict[str, Any]:
    """The summary's JSON document: the run's counts, its jobs', and what the tokens submitted will cost."""
    jobs = {key: int(result.get(key, 0)) for key in _JOB_ROWS}
    return {**summary_of(result, service, reading, elapsed), **jobs,
            "submitted_cost_usd": round(estimate_cost_usd(service.model, jobs["submitted_tokens"], batch=True), 6),
            "submitted_sync_cost_usd": round(estimate_cost_usd(service.model, jobs["submitted_tokens"]), 6)}


def _print(result: dict[str, Any], service: Any, reading: Reading, elapsed: float, json_out: bool) -> dict[str, Any]:
    """The run's summary, and its jobs: submitted, collected, still running, and what they will cost."""
    report = _report(result, service, reading, elapsed)
    if json_out:
        out.print_json(json.dumps(report))
        return report
    print_summary(result, service, reading, elapsed, json_out=False)
    print_table("batch jobs", {label: f"{report[key]:,}" for key, label in _JOB_ROWS.items()}
                | {"estimated cost of the tokens submitted": f"${report['submitted_cost_usd']:.4f} "
                                                             f"(synchronous: ${report['submitted_sync_cost_usd']:.4f})"})
    return report


def run_batch(run: Callable[[Callable[[BatchProgress], None]], dict[str, Any]], service: Any, reading: Reading,
              json_out: bool, again: str, verbose: bool = False, count: bool = False) -> None:
    """Run a batch ingest or sync, print its summary, exit 0 (all done or submitted) or 2 (failures).
    ``count``: the sections are known only from the result (a sync)."""
    result, elapsed = _tracked(run, service, reading, json_out, again)
    if count:
        reading.read = reading.stored = result.get("success_count", 0) + result.get("failed_count", 0)
    summary = _print(result, service, reading, elapsed, json_out)
    if verbose and not json_out:
        for section_id, reason in result["errors"].items():
            out.print(f"  {section_id}: {scrub(reason)}", markup=False)
    raise typer.Exit(2 if summary["failed"] or summary["invalid"] else 0)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _row(job: JobRecord) -> dict[str, Any]:
    return {"id": job.id, "batch_id": job.batch_id, "model": job.settings.model, "dimensions": job.settings.dimensions,
            "collection": job.collection, "endpoint": job.endpoint, "status": job.status.value,
            "collected": job.collected, "held_by_live_run": job.owned, "requests": {"total": job.total, "completed": job.completed, "failed": job.failed},
            "sections": job.sections, "written": job.written, "failures": job.failures, "changed": job.changed,
            "retried": job.retried, "tokens": job.tokens, "age_s": round(job.age_s, 1),
            "estimated_cost_usd": round(estimate_cost_usd(job.settings.model, job.tokens, batch=True), 6),
            "errors": job.errors}


def _collect(store: Any, jobs: Iterable[JobRecord], wait: bool, fallback: bool, json_out: bool) -> int:
    """Collect the open jobs, one service per model, settings and endpoint (with ``json_out``, one
    JSON list of their summaries); the number of sections that failed."""
    from sections.pipeline.batch import BatchOptions

    groups = {(job.settings, job.endpoint): job for job in jobs}
    reports = []
    for settings, endpoint in groups:
        service = build_service(settings.model, endpoint, None, settings.dimensions,
                                long_input=settings.long_input_name or "average")
        reading = Reading()
        result, elapsed = _tracked(lambda progress, service=service: store.collect_batches(
            service, options=BatchOptions(wait=wait, fallback=fallback), on_progress=progress),
            service, reading, json_out, "`sections batches --collect`")
        reading.read = reading.stored = result.get("success_count", 0) + result.get("failed_count", 0)
        reports.append(_report(result, service, reading, elapsed) if json_out
                       else _print(result, service, reading, elapsed, False))
    if json_out:
        out.print_json(json.dumps(reports))
    elif not groups:
        out.print("no open batch jobs to collect", markup=False)
    return sum(report["failed"] for report in reports)


def batches(
    collect: Annotated[bool, typer.Option("--collect", help="Write what the open jobs have finished "
                                                            "(and send again what they did not deliver).")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="With --collect: wait until every open job is collected.")] = False,
    fallback: Fallback = False,
    cancel: Annotated[Optional[str], typer.Option("--cancel", help="Cancel this job (its id or batch id); "
                                                  "collect it afterwards for what it finished.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="List this many of the newest jobs.")] = 50,
    database_url: DatabaseUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Batch API jobs: list them (status, request counts, age, estimated cost), collect them, or cancel one."""
    with open_store(database_url) as store:
        if cancel is not None:
            job = store.jobs.job(cancel)
            if job is None:
                fail(f"no batch job {cancel!r}: `sections batches` lists them")
            service = build_service(job.settings.model, job.endpoint, None, job.settings.dimensions)
            try:
                state = store.cancel_batch(cancel, service)
            except (ProviderError, ValueError) as error:
                fail(f"cannot cancel {cancel}: {error}")
            out.print(f"job {job.id} (batch {state.batch_id}): {state.status.value}; collect it afterwards "
                      "(`sections batches --collect`) to write what it finished", markup=False)
            return
        if collect:
            raise typer.Exit(2 if _collect(store, store.batch_jobs(open_only=True), wait, fallback, json_out) else 0)
        rows = [_row(job) for job in store.batch_jobs(limit)]
    if json_out:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no batch jobs yet: `sections ingest PATH --batch-api` submits some", markup=False)
        return
    for row in rows:
        requests = row["requests"]
        print_table(f"job {row['id']}", {
            "batch": row["batch_id"] or "(not created yet)", "model": row["model"], "status": row["status"]
            + (", collected" if row["collected"] else ""),
            "requests": f"{requests['completed'] + requests['failed']:,}/{requests['total']:,} done "
                        f"({requests['failed']:,} failed)",
            "sections": f"{row['sections']:,} (written {row['written']:,}, failed {row['failures']:,}, changed "
                        f"{row['changed']:,}, sent again {row['retried']:,})",
            "age": _age(row["age_s"]), "estimated cost": f"${row['estimated_cost_usd']:.4f}",
        } | ({"errors": row["errors"]} if row["errors"] else {}))
