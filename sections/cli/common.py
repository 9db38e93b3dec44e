"""What the ``sections`` commands share: the app that registers them, their options, and opening
the service and the store.

Kept apart from ``sections.cli.app`` so the command modules (``cli.py``, ``cli_lifecycle.py``) each stay
small; nothing here parses arguments itself.
"""
from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import typer

from sections.cli.console import database_errors_in_one_line, fail
from sections.records import DEFAULT_COLLECTION, collection_problem
from sections.redact import mask_url

DEFAULT_MODEL = "all-MiniLM-L6-v2"

Model = Annotated[str, typer.Option("--model", "-m", help="all-MiniLM-L6-v2 (local, the default), a local "
                                    "model folder (ONNX, or sentence-transformers with the torch extra), or an "
                                    "OpenAI model (needs OPENAI_API_KEY).")]
DatabaseUrl = Annotated[Optional[str], typer.Option(
    "--database-url", help="Postgres/Supabase connection string (default: DATABASE_URL, else the embedded Postgres).",
    show_default=False)]
BaseUrl = Annotated[Optional[str], typer.Option(
    "--base-url", help="Any OpenAI-compatible server (default: OPENAI_BASE_URL).", show_default=False)]
Provider = Annotated[Optional[str], typer.Option("--provider", help="openai or local (default: from the model).")]
Dimensions = Annotated[Optional[int], typer.Option("--dimensions", help="Shorter vectors (text-embedding-3 models).")]
Concurrency = Annotated[Optional[int], typer.Option(help="Requests in flight (default: the provider's).")]
Rpm = Annotated[Optional[float], typer.Option(help="Requests-per-minute budget (shared by every ingest, sync and "
                                             "watch of the model and server unless --own-budget).")]
Tpm = Annotated[Optional[float], typer.Option(help="Tokens-per-minute budget (shared by every ingest, sync and "
                                             "watch of the model and server unless --own-budget).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print a JSON document instead of tables.")]
Collection = Annotated[str, typer.Option("--collection", "-c", help="The collection (a namespace of sections).")]
AllCollections = Annotated[bool, typer.Option("--all-collections", help="Every collection, not just --collection.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]
OwnBudget = Annotated[bool, typer.Option("--own-budget", help="Learn the rate limit alone instead of sharing one "
                                         "budget with every ingest, sync and watch of this model and server (for "
                                         "separate keys).")]


class Commands(typer.Typer):
    """The ``sections`` app: each command it registers prints any database error it meets as one
    line and exits 1; no command handles that itself, and none can forget to."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        register = super().command(*args, **kwargs)

        def decorator(function: Any) -> Any:
            register(database_errors_in_one_line(function))
            return function

        return decorator


@contextmanager
def loading() -> Iterator[None]:
    """Around imports that make tens of thousands of long-lived objects (the openai SDK's pydantic
    classes, psycopg, onnxruntime or torch): the collector would walk the growing heap again and again while they
    load, so it waits, and what they made is frozen out of its reach for the rest of the process
    (a run's own garbage is still collected)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def refuse_unknown_model(model: str, base_url: Optional[str], provider: Optional[str]) -> None:
    """Refuse a model name nobody serves before anything starts: no database opened, nothing loaded."""
    from sections.providers import resolve_kind, server_url

    try:
        resolve_kind(model, server_url(base_url), provider)
    except ValueError as error:
        fail(str(error))


def build_service(model: str, base_url: Optional[str], provider: Optional[str], dimensions: Optional[int],
                  **options: Any):
    """The embedding service; a local model loads here (about a second on ONNX Runtime, seconds on
    torch), so commands open the database first and a database that cannot be reached is reported
    before any model loads."""
    # The openai SDK imports aiohttp when it can (~0.15 s, a sixth of a search) only to offer an
    # async transport this command never uses: hidden while the SDK loads, it goes without.
    hide = "openai" not in sys.modules and "aiohttp" not in sys.modules
    if hide:
        sys.modules["aiohttp"] = None  # type: ignore[assignment]  # import aiohttp -> ImportError
    try:
        with loading():
            from sections.engine.service import EmbeddingService
    finally:
        if hide:
            del sys.modules["aiohttp"]

    try:
        with loading():  # a local model imports its runtime when it is built
            return EmbeddingService(model=model, base_url=base_url, provider=provider, dimensions=dimensions,
                                **{k: v for k, v in options.items() if v is not None})
    except (ValueError, RuntimeError, OSError) as error:
        fail(str(error))


DbWait = Annotated[float, typer.Option(
    "--db-wait", help="Seconds a run waits for its database to come back (sending nothing meanwhile) before it "
    "stops; what was answered is then kept in a local spool that the next run writes first.")]
DEFAULT_DB_WAIT_S = 120.0
StopGrace = Annotated[Optional[float], typer.Option(
    "--stop-grace", help="Seconds the replies in flight get after Ctrl-C or SIGTERM (they are paid for; default 2).",
    show_default=False)]


def set_stop_grace(service: Any, seconds: Optional[float]) -> None:
    if seconds is not None:
        if seconds < 0:
            fail("--stop-grace: must be 0 or more seconds")
        service.stop_grace_s = seconds
SPOOL_DIR_ENV = "SECTIONS_SPOOL_DIR"  # where spools live (default: the user's state folder)


def keeping_for(store: Any, service: Any, db_wait: float) -> Any:
    """How an ingest or sync keeps what it pays for when its database blinks: it waits ``db_wait``
    seconds, saying in one line when an outage starts and one when it ends, then spools to the
    file of this database and these settings (``sections.pipeline.spool``)."""
    import hashlib
    import os
    import time
    from pathlib import Path

    import platformdirs

    from sections.cli.console import err
    from sections.pipeline.outage import OutagePolicy
    from sections.pipeline.spool import Spool
    from sections.pipeline.stream import Keeping

    if db_wait < 0:
        fail("--db-wait: must be 0 or more seconds")
    folder = Path(os.environ.get(SPOOL_DIR_ENV) or Path(platformdirs.user_state_dir("sections")) / "spool")
    key = hashlib.sha256(f"{store.url_masked}\0{service.settings!r}".encode()).hexdigest()[:20]
    since = [0.0]

    def said(away: bool) -> None:
        if away:
            since[0] = time.monotonic()
            err.print(f"database unreachable: sending held; waiting up to {db_wait:.0f} s for it", markup=False)
        else:
            err.print(f"database back after {time.monotonic() - since[0]:.1f} s: sending resumed", markup=False)

    return Keeping(OutagePolicy(window_s=db_wait), Spool(folder / f"{key}.jsonl"), said)


def open_store(database_url: Optional[str]):
    with loading():
        from sections.store.supabase_store import SupabaseStore

    try:
        return SupabaseStore(database_url, connect_timeout=15)
    except Exception as error:  # any reason the database cannot be reached or prepared
        where = mask_url(database_url) if database_url else "the database (DATABASE_URL or the embedded Postgres)"
        message = str(error).strip()  # fail() masks any URL in it
        fail(f"cannot open {where}: {message.splitlines()[0] if message else type(error).__name__}")


def chosen_collection(collection: str = DEFAULT_COLLECTION, all_collections: bool = False) -> Optional[str]:
    """The collection a command keeps to (None: every one), or a one-line error for a bad name."""
    if all_collections:
        return None
    if problem := collection_problem(collection):
        fail(f"--collection: {problem}")
    return collection


def confirmed(question: str, yes: bool) -> bool:
    """``--yes``, or the user's answer; with no terminal to ask on, a clear refusal."""
    if yes:
        return True
    if not sys.stdin.isatty():
        fail(f"{question} Pass --yes to go ahead (there is no terminal to ask on).")
    return typer.confirm(question, default=False)
