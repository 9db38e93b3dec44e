"""Ingest: store the sections given, embed those whose stored vector is missing or out of date.

Streams, so memory is bounded by the chunk and queue sizes, never by the corpus: ``chunk_size``
sections at a time are validated, upserted and checked against their stored fingerprints; the due
ones go to the embedder as it asks for them; its outcomes go through the writer thread's bounded
queue, so embedding and writing overlap.

Concurrent runs pay once: before a due section goes to the embedder the run leases it
(``Backend.worker``/``Leases.take``); a section another run holds is skipped and counted in
``busy_count``. Sections are stored in ``IngestOptions.collection``; an id another collection holds
is refused (a failure with its reason), never moved. With ``IngestOptions.prune`` the ids read are
kept and, after a run that ended well, what the named sources no longer hold is deleted
(``sections.pipeline.prune``).

A stop (an exception from the embedder, such as ``ProviderFatalError`` on quota/auth failures, or
KeyboardInterrupt; or a database error in the writer) writes everything that arrived, records
nothing for sections never answered, prunes nothing, and re-raises with the partial summary as
``error.result``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

from sections.fingerprint import EMPTY_CONTENT, Due, fingerprint, split_current
from sections.pipeline.backend import Backend, Leases
from sections.pipeline.prune import Pruned, prune_unseen
from sections.pipeline.outage import Patience
from sections.pipeline.spool import Spool
from sections.pipeline.stream import Keeping, embed_into, patience_for
from sections.pipeline.tally import ProgressCallback, Tally
from sections.pipeline.waiting import wait_for_others
from sections.pipeline.writer import Writer
from sections.records import (DEFAULT_COLLECTION, Embedder, EmbeddingSettings, FailureRow, IngestSummary, Rejected, Section,
                          Selection, coerce_section, collection_problem)

T = TypeVar("T")
__all__ = ["DEFAULT_CHUNK", "DEFAULT_WRITE_BATCH", "IngestOptions", "Run", "chunked", "dedupe", "ingest", "read_due",
           "valid_sections", "write_spool"]



DEFAULT_CHUNK = 1000  # sections read, upserted and fingerprint-checked per round trip
DEFAULT_WRITE_BATCH = 1000  # outcomes per write transaction


@dataclass(frozen=True, slots=True)
class IngestOptions:
    chunk_size: int = DEFAULT_CHUNK
    write_batch: int = DEFAULT_WRITE_BATCH
    queue_size: int | None = None  # outcomes waiting for the writer (default 2 x write_batch)
    flush_interval: float = 0.25  # the longest an outcome waits before it is written
    collection: str = DEFAULT_COLLECTION
    prune: Selection | None = None  # the files and folders read: delete what they no longer hold
    dry_run_prune: bool = False  # with prune: list what would be deleted, delete nothing
    wait_for_others: bool = True  # wait for the due sections another run holds (False: leave them, counted busy)
    keeping: Keeping = Keeping()  # waiting out a database that blinks; the spool when it does not come back

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.write_batch < 1:
            raise ValueError("chunk_size and write_batch must be positive")
        if problem := collection_problem(self.collection):
            raise ValueError(problem)
        if self.prune is not None and self.prune.collection != self.collection:
            raise ValueError("a prune stays inside the run's collection")


@dataclass(slots=True)
class Run:
    """A finished run: the summary callers get, and the vector sizes written (for index policy)."""

    summary: IngestSummary
    dimensions: set[int] = field(default_factory=set)
    pruned: Pruned | None = None
    transient: int = 0  # failures left unrecorded: the provider's state, not the sections' (sync, watch)
    from_spool: int = 0  # answers an earlier run spooled, written before this run sent anything


def dedupe(sections: Iterable[Section]) -> list[Section]:
    """Keep the last occurrence of each id, at its position (an upsert cannot touch a row twice)."""
    last: dict[str, Section] = {}
    for section in sections:
        last.pop(section.id, None)
        last[section.id] = section
    return list(last.values())


def valid_sections(objects: Iterable[Any], rejected: list[Rejected]) -> list[Section]:
    """Sections from dicts/objects; what cannot be stored goes to ``rejected`` with its reason."""
    sections = []
    for obj in objects:
        coerced = coerce_section(obj)
        if isinstance(coerced, Rejected):
            rejected.append(coerced)
        else:
            sections.append(coerced)
    return sections


def chunked(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` items (the last may be shorter), read lazily."""
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _at_once(action: Callable[[], T]) -> T:
    return action()


def read_due(backend: Backend, leases: Leases, sections: Iterable[Any], settings: EmbeddingSettings,
             options: IngestOptions, tally: Tally, put: Callable[[FailureRow], None], seen: set[str],
             stopped: Callable[[], bool] = lambda: False, patience: Patience | None = None,
             busy: dict[str, Due] | None = None) -> Iterator[Due]:
    """The sections to embed, as they are read: each chunk validated, stored in the collection and
    checked against the stored fingerprints; the due sections this run could lease are yielded,
    the rest counted. Blank sections go to ``put`` as failures; with a prune, the ids read are
    added to ``seen``. ``stopped`` is asked after each chunk. With ``patience``, each call into
    the backend waits out an outage. Due sections another run holds go to ``busy``, when given."""
    call = patience.call if patience is not None else _at_once
    for chunk in chunked(sections, options.chunk_size):
        rejected: list[Rejected] = []
        rows = dedupe(valid_sections(chunk, rejected))
        for bad in rejected:
            tally.fail(bad.section_id, bad.reason)
        if options.prune is not None:
            seen.update(row.id for row in rows)
            seen.update(bad.section_id for bad in rejected if bad.section_id is not None)
        if rows and (foreign := call(lambda: backend.foreign_sections([row.id for row in rows], options.collection))):
            for section_id, collection in foreign.items():
                tally.fail(section_id, f"section id is already stored in collection {collection!r}; "
                                       "ids are unique across collections")
            rows = [row for row in rows if row.id not in foreign]
        if not rows:
            continue
        call(lambda: backend.upsert_sections(rows, options.collection))
        split = split_current(rows, settings, call(lambda: backend.stored_hashes(settings.model, [row.id for row in rows])))
        tally.answered(len(split.blank))  # before the writer can commit them
        for blank in split.blank:
            put(FailureRow(blank.id, EMPTY_CONTENT, fingerprint(blank, settings)))
        tally.skip(split.unchanged)
        held = call(lambda: leases.take(settings, {due.section.id: due.digest for due in split.due}))
        tally.busy_elsewhere(len(split.due) - len(held))
        if busy is not None:
            busy.update((due.section.id, due) for due in split.due if due.section.id not in held)
        yield from (due for due in split.due if due.section.id in held)
        tally.report()
        if stopped():
            return


def ingest(backend: Backend, sections: Iterable[Any], embedder: Embedder, options: IngestOptions,
           on_progress: ProgressCallback | None = None) -> Run:
    with backend.worker("ingest") as leases:
        patience = patience_for(backend, embedder, options.keeping)
        from_spool = write_spool(backend, embedder.settings, options.keeping.spool, patience)
        run, seen = _ingest(backend, leases, sections, embedder, options, on_progress, patience)
        run.from_spool = from_spool
    if options.prune is not None:
        run.pruned = prune_unseen(backend, options.prune, seen, dry_run=options.dry_run_prune)
    return run


def write_spool(backend: Backend, settings: EmbeddingSettings, spool: Spool | None, patience: Patience) -> int:
    """Write what an earlier run spooled (``sections.pipeline.spool``) before anything is sent:
    those answers are paid for, and once stored their sections are no longer due."""
    if spool is None:
        return 0
    return patience.call(lambda: spool.write_back(lambda vectors, failures: backend.write_batch(settings, vectors, failures)))


def _ingest(backend: Backend, leases: Leases, sections: Iterable[Any], embedder: Embedder, options: IngestOptions,
            on_progress: ProgressCallback | None, patience: Patience) -> tuple[Run, set[str]]:
    settings = embedder.settings
    tally = Tally.billed_by(embedder, on_progress)
    writer = Writer(backend, settings, tally, batch_size=options.write_batch,
                    queue_size=options.queue_size or 2 * options.write_batch, flush_interval=options.flush_interval,
                    patience=patience, spool=options.keeping.spool)
    seen: set[str] = set()  # ids read, kept only when a prune needs them
    busy: dict[str, Due] = {}  # due sections another run holds
    dues = read_due(backend, leases, sections, settings, options, tally, writer.put, seen,
                    lambda: writer.error is not None, patience, busy if options.wait_for_others else None)
    embed_into(embedder, dues, writer, tally)
    if busy:
        wait_for_others(backend, leases, embedder, busy, tally, patience,
                        lambda: Writer(backend, settings, tally, batch_size=options.write_batch,
                                       queue_size=options.queue_size or 2 * options.write_batch,
                                       flush_interval=options.flush_interval, patience=patience,
                                       spool=options.keeping.spool))
    return Run(tally.result(), set(tally.dimensions)), seen
