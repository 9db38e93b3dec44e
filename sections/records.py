"""The types that cross stages: what is read, what is embedded, what is written, what is returned.

One definition each, so a reader, the engine, the writer and the faces cannot disagree about a
field: one ``Section`` with one rule for what Postgres can store, named rows instead of bare
tuples, and TypedDicts for the seed's dict-shaped results (their keys are the seed's contract).
"""
from __future__ import annotations

import json
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NotRequired, Protocol, TypedDict

import numpy as np

from sections.engine.tokens import LongInputPolicy

__all__ = [
    "DEFAULT_COLLECTION",
    "Deleted",
    "MAX_REASON_CHARS",
    "MAX_VECTOR_DIMENSIONS",
    "BatchEmbeddings",
    "Embedder",
    "EmbeddingOutcome",
    "EmbeddingSettings",
    "FailureRow",
    "IngestSummary",
    "ProgressCounts",
    "Rejected",
    "RetrySchedule",
    "SearchFilter",
    "Section",
    "Selection",
    "VectorRow",
    "WriteResult",
    "check_vector",
    "coerce_section",
    "collection_problem",
    "section_problem",
    "stored_reason",
    "text_problem",
]


# -- sections ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """One unit to embed.

    ``metadata`` is any JSON value; None means "keep what is stored" (a caller that says nothing
    about metadata must not erase it). ``location`` ("file:line") exists only for messages, so it
    takes no part in equality, and ``metadata`` takes no part in the hash, so sections can still be
    put in sets. ``source`` (where it was read from, like ``location``) takes no part in equality.
    """

    id: str
    title: str
    content: str
    metadata: Any = field(default=None, hash=False)
    location: str = field(default="", compare=False)
    from_document: bool = field(default=False, compare=False, hash=False)  # read from a document file
    source: str | None = field(default=None, compare=False)  # the file it was read from (absolute); None: API or stdin


class Rejected(NamedTuple):
    """An input that cannot become a stored section, and why (its id when it had a usable one)."""

    section_id: str | None
    reason: str


_UNSTORABLE = "holds a NUL character or a lone surrogate, which Postgres text cannot store"


def text_problem(value: str) -> str | None:
    """Why Postgres ``text`` cannot hold ``value`` (NUL, or a lone surrogate that is not UTF-8), or None."""
    if "\x00" in value:
        return _UNSTORABLE
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _UNSTORABLE
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _strings(key)
            yield from _strings(inner)
    elif isinstance(value, (list, tuple)):
        for inner in value:
            yield from _strings(inner)


def _json_problem(value: Any) -> str | None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        return f"is not JSON: {error}"
    if any(text_problem(text) for text in _strings(value)):
        return _UNSTORABLE
    return None


def section_problem(section: Section) -> str | None:
    """The one rule for what the store can hold: why this section cannot be stored, or None.

    Checked before anything is spent, so a bad section is refused (with its file and line when it
    came from a file) instead of failing a write batch.
    """
    if section.id == "":
        return "section id is empty"
    for name, value in (("id", section.id), ("title", section.title), ("content", section.content)):
        problem = text_problem(value)
        if problem:
            return f"{name} {problem}"
    if section.metadata is not None:
        problem = _json_problem(section.metadata)
        if problem:
            return f"metadata {problem}"
    return None


DEFAULT_COLLECTION = "default"
MAX_COLLECTION_CHARS = 200


def collection_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a collection, or None."""
    if not isinstance(name, str) or not name.strip():
        return "collection name must be a non-empty string"
    if len(name) > MAX_COLLECTION_CHARS:
        return f"collection name is longer than {MAX_COLLECTION_CHARS} characters"
    problem = text_problem(name)
    return f"collection name {problem}" if problem else None


@dataclass(frozen=True, slots=True)
class Selection:
    """Sections of one collection, chosen for deleting or pruning: any of the ids, the ids starting
    with ``prefix``, the sections read from ``files`` or from under ``folders`` (absolute paths,
    each folder ending with "/"), or with ``everything`` the whole collection."""

    collection: str = DEFAULT_COLLECTION
    ids: tuple[str, ...] = ()
    prefix: str | None = None
    files: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    everything: bool = False

    @property
    def empty(self) -> bool:
        return not (self.ids or self.prefix or self.files or self.folders or self.everything)


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Which sections a search may return, beyond its collection: those whose metadata contains
    ``metadata`` (Postgres jsonb containment: every key holds that value; a list holds those
    items), read from one of ``sources`` (absolute paths, as ingest stores them: a file, or a
    folder and everything under it). Empty: no restriction. The CLI's ``--filter``/``--source``,
    the store's ``search`` and the SQL functions' ``filter``/``sources`` parameters all mean this."""

    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    sources: tuple[str, ...] = ()

    def problem(self) -> str | None:
        """Why the database could not take this filter, or None."""
        if not isinstance(self.metadata, Mapping) or not all(isinstance(key, str) for key in self.metadata):
            return "metadata filter must be a mapping with string keys"
        try:
            json.dumps(dict(self.metadata), allow_nan=False)  # jsonb has no NaN or infinity
        except (TypeError, ValueError) as error:
            return f"metadata filter is not JSON: {error}"
        if any(text_problem(text) for text in _strings(dict(self.metadata))):
            return f"metadata filter {_UNSTORABLE}"
        for source in self.sources:
            if not isinstance(source, str) or not source or text_problem(source):
                return f"source {source!r} is not a path"
        return None


class Deleted(NamedTuple):
    """What a delete removed: sections, and the vectors that went with them."""

    sections: int
    vectors: int


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def coerce_section(obj: Any) -> Section | Rejected:
    """A ``Section`` from a dict or any object with id/title/content[/metadata], or why not.

    Ids may be str or int (ints become their decimal string); title and content default to "".
    """
    if isinstance(obj, Section):
        section = obj
    else:
        raw_id = _field(obj, "id")
        if raw_id is None or isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            return Rejected(None if raw_id is None else str(raw_id), "section has no id (str or int)")
        title = _field(obj, "title") or ""
        content = _field(obj, "content") or ""
        section_id = raw_id if isinstance(raw_id, str) else str(raw_id)
        if not isinstance(title, str) or not isinstance(content, str):
            return Rejected(section_id, "title and content must be strings")
        section = Section(section_id, title, content, _field(obj, "metadata"))
    problem = section_problem(section)
    if problem:
        return Rejected(section.id, problem)
    return section


# -- settings that decide a vector ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    """Everything besides the text that decides a vector: a change to any of it is a new vector.

    Stored beside every vector (``model_name``, ``requested_dimensions``, ``long_input``) and folded
    into its content hash, so the store can tell in SQL which vectors are out of date.
    """

    model: str
    dimensions: int | None = None  # requested from the provider; None: the model's own size
    long_input: LongInputPolicy | None = LongInputPolicy.AVERAGE  # None: vectors written as given

    @property
    def long_input_name(self) -> str | None:
        """The policy as stored and hashed (its name)."""
        return None if self.long_input is None else self.long_input.value

    @classmethod
    def stored(cls, model: str, dimensions: int | None, long_input_name: str | None) -> EmbeddingSettings:
        """Settings as a row stores them (``long_input_name`` None: vectors written as given)."""
        return cls(model, dimensions, None if long_input_name is None else LongInputPolicy.parse(long_input_name))


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When a section that failed is tried again: after ``delay_s`` × attempts (at most ``cap_s``),
    and not at all after ``max_attempts`` failures of the same fingerprint (until it changes)."""

    max_attempts: int = 5
    delay_s: float = 60.0
    cap_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.delay_s < 0 or self.cap_s < 0:
            raise ValueError("retry policy: max_attempts must be at least 1, delays not negative")


# -- what the engine hands on ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddingOutcome:
    """The result for one caller item: a float32 vector, or the reason it failed."""

    key: Hashable
    vector: np.ndarray | None
    tokens: int | None  # the item's own count; None when its caller asked for none (it is not the bill)
    error: str | None = None
    transient: bool = False  # failed for the provider's state (down, overloaded), not for the input

    @property
    def ok(self) -> bool:
        return self.vector is not None and self.error is None


class Embedder(Protocol):
    """What the store needs from an embedding service (``EmbeddingService`` is one)."""

    @property
    def settings(self) -> EmbeddingSettings: ...

    @property
    def total_tokens(self) -> int:
        """Tokens billed since the service was made; a run's bill is the difference."""
        ...

    def stream_embeddings(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[EmbeddingOutcome]: ...

    def generate_embedding(self, text: str) -> list[float]: ...


MAX_VECTOR_DIMENSIONS = 16000  # pgvector's limit for the vector type


def check_vector(vector: Any) -> tuple[np.ndarray | None, str | None]:
    """The vector as a contiguous float32 1-D array, or the reason pgvector cannot store it."""
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as error:
        return None, f"not a vector: {error}"
    if array.ndim != 1:
        return None, f"vector must be 1-D, got shape {array.shape}"
    if not 1 <= array.shape[0] <= MAX_VECTOR_DIMENSIONS:
        return None, f"vector has {array.shape[0]} dimensions; pgvector stores 1 to {MAX_VECTOR_DIMENSIONS}"
    if not np.isfinite(array).all():
        return None, "vector contains NaN or infinity"
    return array, None


# -- what the writer takes and gives -----------------------------------------------------------------------


class VectorRow(NamedTuple):
    """One vector to store for a section under the run's settings."""

    section_id: str
    vector: Any  # a float32 1-D array (or anything numpy can read as one)
    token_count: int
    content_hash: bytes | None


class FailureRow(NamedTuple):
    """A section that could not be embedded (or stored), and why; ``content_hash`` is the fingerprint
    it failed on (a watcher retries it only while attempts remain, or once that changes)."""

    section_id: str
    reason: str
    content_hash: bytes | None = None


MAX_REASON_CHARS = 2000
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


def stored_reason(reason: str | None) -> str:
    """A failure reason as it can be stored: bounded, never empty, and with what Postgres text cannot
    hold (NUL, lone surrogates) replaced, since reasons are free text from providers."""
    return _NOT_TEXT.sub("\ufffd", reason or "failed")[:MAX_REASON_CHARS]


@dataclass(slots=True)
class WriteResult:
    """What one write batch did."""

    written: int = 0  # embeddings inserted or updated
    recorded: int = 0  # failures inserted or updated in embedding_failures
    missing: list[str] = field(default_factory=list)  # ids whose section does not exist (nothing written)
    rejected: list[FailureRow] = field(default_factory=list)  # vectors pgvector cannot store


# -- results handed to callers (the seed's shapes) ---------------------------------------------------------


class IngestSummary(TypedDict):
    """``batch_ingest_embeddings`` / ``ingest`` / ``sync``: the seed's four keys and our two."""

    success_count: int
    failed_count: int
    total_tokens: int
    failed_ids: list[str]
    skipped_count: int
    errors: dict[str, str]
    busy_count: NotRequired[int]  # of the skipped: due, but another run was embedding them (only when > 0)
    pruned_count: NotRequired[int]  # sections a prune deleted (only when a prune was asked for)
    pruned_ids: NotRequired[list[str]]  # their ids
    index_error: NotRequired[str]  # why the index build after the run failed (the vectors are stored)
    from_spool: NotRequired[int]  # answers an earlier run spooled, written before this run sent anything (when > 0)


class BatchEmbeddings(TypedDict):
    """``batch_generate_embeddings``: the seed's three keys and our two."""

    embeddings: list[list[float]]
    failed_indices: list[int]
    total_tokens: int
    indices: list[int]
    errors: dict[int, str]


class ProgressCounts(TypedDict):
    """Where a run stands, as its progress callback sees it.

    ``success``, ``failed``, ``skipped`` are committed; ``pending`` answered, not committed yet (a display
    adds them); ``tokens`` the bill so far, as the summary reports it; ``waiting``: held by another run.
    """

    success: int
    failed: int
    skipped: int
    pending: int
    tokens: int
    waiting: NotRequired[int]
