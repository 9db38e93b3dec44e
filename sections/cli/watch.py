"""The ``sections watch`` command: keep a model's vectors in step with a changing table.

It says at start how it hears of changes (LISTEN, or polling and why), prints a line per pass that
did something (``--json``: one JSON object per line, for log shippers), and on Ctrl-C or SIGTERM
lets what is in flight finish or abandons it (``sections.cli.interrupts``), writes what was paid for and
exits 0: stopping is how a watcher ends. A second signal leaves at once.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Annotated, Optional

import typer

from sections.cli.common import (DEFAULT_DB_WAIT_S, DEFAULT_MODEL, AllCollections, BaseUrl, Collection, Concurrency,
                             DatabaseUrl, DbWait, Dimensions, JsonOut, Model, OwnBudget, Provider, Rpm, Tpm, build_service,
                             chosen_collection, keeping_for, open_store, refuse_unknown_model)
from sections.cli.console import err, fail, out, stopped_by
from sections.engine.errors import Interrupted, ProviderFatalError
from sections.cli.interrupts import Signals, leave
from sections.records import DEFAULT_COLLECTION, RetrySchedule

__all__ = ["STOP_GRACE_S", "watch"]

STOP_GRACE_S = 10.0  # within the 30 s a service manager (systemd, Kubernetes) gives before SIGKILL


def watch(
    model: Model = DEFAULT_MODEL,
    database_url: DatabaseUrl = None,
    base_url: BaseUrl = None,
    provider: Provider = None,
    dimensions: Dimensions = None,
    concurrency: Concurrency = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    collection: Collection = DEFAULT_COLLECTION,
    all_collections: AllCollections = False,
    listen_url: Annotated[Optional[str], typer.Option(
        "--listen-url", help="A direct (session) connection for LISTEN when --database-url goes through a "
        "transaction pooler.", show_default=False)] = None,
    poll_interval: Annotated[float, typer.Option(help="Seconds between polls (the safety net under LISTEN).")] = 30.0,
    poll_only: Annotated[bool, typer.Option("--poll-only", help="Never LISTEN; poll.")] = False,
    once: Annotated[bool, typer.Option("--once", help="One pass over what is due, then exit (as sync).")] = False,
    max_attempts: Annotated[int, typer.Option(help="Failures of the same text before a section is left alone "
                                              "until it changes.")] = 5,
    retry_delay: Annotated[float, typer.Option(help="Seconds a failed section waits per failed attempt.")] = 60.0,
    own_budget: OwnBudget = False,
    json_out: JsonOut = False,
    db_wait: DbWait = DEFAULT_DB_WAIT_S,
) -> None:
    """Embed what is due, then every insert and edit as it comes (LISTEN/NOTIFY, with polling); many may run at once."""
    from sections.pipeline.watch import Pass, WatchOptions

    name = chosen_collection(collection, all_collections)
    if poll_interval <= 0 or max_attempts < 1 or retry_delay < 0:
        fail("--poll-interval must be positive, --max-attempts at least 1, --retry-delay not negative")
    refuse_unknown_model(model, base_url, provider)
    store = open_store(database_url)  # the database first: a refused URL is reported before any model loads
    service = build_service(model, base_url, provider, dimensions, concurrency=concurrency, rpm=rpm, tpm=tpm)
    service.stop_grace_s = STOP_GRACE_S  # a stopping watcher waits longer for what is paid for
    stop = threading.Event()

    def report(done: Pass) -> None:
        summary = done.summary or {}
        line = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "embedded": summary.get("success_count", 0),
                "failed": summary.get("failed_count", 0), "tokens": summary.get("total_tokens", 0),
                "provider_unavailable": done.transient, "error": done.error}
        if json_out:
            print(json.dumps(line), flush=True)  # one object per line, as log shippers read them
        elif done.outage:
            pass  # one line when the outage starts and one when it ends (keeping_for says them)
        elif done.error is not None:
            err.print(f"{line['at']} pass cut short ({stopped_by(Exception(done.error))}); retrying", markup=False)
        elif line["embedded"] or line["failed"] or done.transient:
            out.print(f"{line['at']} embedded {line['embedded']:,}, failed {line['failed']:,}, "
                      f"{line['tokens']:,} tokens" + (f"; provider unavailable for {done.transient:,}, "
                                                      "retrying" if done.transient else ""), markup=False)

    with store, Signals(lambda: (stop.set(), service.stop_requested.set()), lambda: "stopped", store.close) as signals:
        budget = "not shared (--own-budget)" if own_budget else f"shared as {store.share_budget(service)!r}"
        feed = store.change_feed(name, stop, listen_url=listen_url, poll_only=poll_only or once,
                                 poll_interval=poll_interval)
        where = "every collection" if name is None else f"collection {name}"
        err.print(f"watching {service.model} in {where}: {feed.how}; rate budget {budget}; "
                  "Ctrl-C stops", markup=False)  # on stderr even with --json: stdout holds one object per pass
        options = WatchOptions(name, poll_interval, retry=RetrySchedule(max_attempts, retry_delay), once=once,
                               keeping=keeping_for(store, service, db_wait))
        try:
            totals = store.watch(service, options, feed.feed, stop, report)
        except Interrupted:
            totals = None
        except ProviderFatalError as error:
            fail(f"{error} — what was embedded is stored")
        signals.said = True
    line = "stopped" if totals is None or signals.received is not None else "done"
    if totals is not None and not json_out:
        err.print(f"{line}: {totals.passes:,} pass(es), {totals.embedded:,} embedded, {totals.failed:,} failed, "
                  f"{totals.tokens:,} tokens", markup=False)
    if signals.received is not None:
        leave(0)
