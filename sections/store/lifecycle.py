"""The store's lifecycle operations: collections, deleting, dropping a model, what a sync would do,
watching for changes, and the rate budget workers share.

A part ``SupabaseStore`` holds (``store.lifecycle``) and hands this work to; it is given the
database, the pipeline's backend and the job store, and reaches for nothing else.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import psycopg

from sections.postgres import models as pg_models
from sections.postgres import sections as pg_sections
from sections.postgres import status as pg_status
from sections.pipeline.backend import ChangeFeed, due_pages
from sections.pipeline.watch import Pass, WatchOptions, WatchTotals, watch
from sections.postgres import budget, notify
from sections.postgres.backend import PostgresBackend, PostgresJobs
from sections.postgres.database import Database
from sections.records import (DEFAULT_COLLECTION, Deleted, Embedder, EmbeddingSettings, Section, Selection,
                          collection_problem, text_problem)

__all__ = ["Feed", "Lifecycle", "check_collection", "check_model"]


class Feed(NamedTuple):
    """How a watcher hears of changes, and why (to say at start)."""

    feed: ChangeFeed
    how: str


def check_model(model_name: Any) -> None:
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model name must be a non-empty string")
    problem = text_problem(model_name)
    if problem:
        raise ValueError(f"model name {problem}")


def check_collection(name: Any) -> None:
    if problem := collection_problem(name):
        raise ValueError(problem)


class Lifecycle:
    def __init__(self, database: Database, backend: PostgresBackend, jobs: PostgresJobs):
        self.database = database
        self.backend = backend
        self.jobs = jobs

    def delete(self, selection: Selection) -> Deleted:
        """Delete what ``selection`` matches in its collection, with vectors and failures (one transaction)."""
        check_collection(selection.collection)
        return self.backend.delete_selected(selection)

    def selected_ids(self, selection: Selection) -> list[str]:
        return self.backend.selected_ids(selection)

    def sources_named(self, collection: str, relative: str) -> list[pg_sections.NamedSource]:
        """The stored files of ``collection`` that ``relative`` names as ingest was given it (relative
        to the folder named then): the file itself, or the files under it."""
        with self.database.connection() as conn:
            return pg_sections.sources_named(conn, collection, relative)

    def other_files(self, read: list[tuple[str, str]]) -> list[pg_sections.OtherFile]:
        """Of these (section id, file read from) pairs, those whose id is stored from another file."""
        with self.database.connection() as conn:
            return pg_sections.other_files(conn, read)

    def collections(self) -> dict[str, int]:
        """Sections per collection."""
        with self.database.connection() as conn:
            return pg_status.collection_sizes(conn)

    def workers(self) -> list[pg_status.WorkerStatus]:
        """Ingests and watchers whose heartbeat is recent: host, pid, what they do, sections embedded."""
        with self.database.connection() as conn:
            return pg_status.recent_workers(conn)

    def drop_model(self, model_name: str) -> pg_models.DroppedModel:
        """Delete a model's vectors, failures and leases and drop its indexes, in every collection."""
        check_model(model_name)
        with self.database.connection() as conn, conn.transaction():
            return pg_models.drop_model(conn, model_name)

    def due_sections(self, settings: EmbeddingSettings, collection: str | None = DEFAULT_COLLECTION,
                     page: int = 1000) -> Iterator[Section]:
        """The sections a sync would embed now, in id order, read without claiming (for a dry run)."""
        for rows in due_pages(lambda after: self.jobs.due(settings, after, page, collection)):
            yield from rows

    def change_feed(self, collection: str | None, stop: threading.Event, *, listen_url: str | None = None,
                    poll_only: bool = False, poll_interval: float = 30.0) -> Feed:
        """LISTEN where this connection (or ``listen_url``) carries notifications, else polling."""
        polling = f"polling every {poll_interval:g} s"
        if poll_only:
            return Feed(notify.PollFeed(stop), f"{polling} (asked for)")
        try:
            with self.database.connect(listen_url) as probe, self.database.connection() as sender:
                heard = notify.hears_notifications(probe, sender)
        except psycopg.Error as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return Feed(notify.PollFeed(stop), f"{polling}: cannot open a connection to listen on ({first})")
        if not heard:
            return Feed(notify.PollFeed(stop), f"{polling}: this connection does not carry LISTEN/NOTIFY (a "
                        "transaction pooler, such as Supabase's port 6543?); --listen-url with a direct "
                        "connection makes changes arrive at once")
        return Feed(notify.ListenFeed(lambda: self.database.connect(listen_url), collection, stop),
                    "listening for changes (NOTIFY), and polling every " f"{poll_interval:g} s")

    def watch(self, embedder: Embedder, options: WatchOptions, feed: ChangeFeed, stop: threading.Event,
              on_pass: Callable[[Pass], None] | None = None) -> WatchTotals:
        """Embed what is due, then every change as it comes, until ``stop`` (``sections.pipeline.watch``)."""
        check_model(embedder.settings.model)
        return watch(self.backend, embedder, options, feed, stop, on_pass)

    def share_budget(self, embedder: Any) -> str:
        """Make ``embedder`` (an ``EmbeddingService``) draw on the rate budget every worker of its
        model and server shares through this database; returns the budget's key."""
        key = budget.budget_key(embedder.settings.model, getattr(embedder, "base_url", None))
        embedder.limiter.share(budget.PostgresBudget(self.database, key))
        return key

