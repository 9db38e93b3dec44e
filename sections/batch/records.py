"""The types of the Batch API path that cross stages: files planned, jobs recorded, results read.

A Batch API job is paid for once it is created, and it outlives the process that created it. So
what a job covers is a record in the database (``JobItem``: a section, the fingerprint of the text
sent, and where its pieces sit in the file), written before anyone waits on the job; everything a
later run needs to resume it, collect it or retry part of it is in these records.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import IO, NamedTuple, Protocol

import numpy as np

from sections.records import EmbeddingOutcome, EmbeddingSettings, FailureRow, IngestSummary, VectorRow, WriteResult

__all__ = ["BatchApiEmbedder", "BatchCapable", "BatchFile", "BatchLimits", "BatchProgress", "BatchProgressCallback", "BatchState", "BatchStatus", "BatchSummary",
           "FailureKind", "ItemResult", "JobItem", "JobRecord", "JobResults", "JobWrite", "NewJob", "PendingItem", "RequestResult", "Slot", "custom_id",
           "request_number"]

_CUSTOM_ID = "req-"


def custom_id(request: int) -> str:
    """The ``custom_id`` of a file's ``request``-th line: results come back in any order and are
    joined on it."""
    return f"{_CUSTOM_ID}{request}"


def request_number(value: object) -> int | None:
    """The request a ``custom_id`` names, or None for one this client never wrote."""
    if not isinstance(value, str) or not value.startswith(_CUSTOM_ID) or not value[len(_CUSTOM_ID):].isdigit():
        return None
    return int(value[len(_CUSTOM_ID):])


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one batch input file may hold: OpenAI's limits by default (embedding inputs are summed
    over all requests of the file)."""

    max_requests: int = 50_000
    max_inputs: int = 50_000
    max_bytes: int = 200 * 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.max_requests, self.max_inputs, self.max_bytes) < 1:
            raise ValueError(f"batch limits must be positive: {self}")


class BatchStatus(str, Enum):
    """A job's status: the Batch API's own, and ``submitting`` before the provider has a batch."""

    SUBMITTING = "submitting"  # recorded and uploaded; the batch may or may not exist yet
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Nothing more will run: what was done is in the output and error files."""
        return self in (BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


class Slot(NamedTuple):
    """Where one piece of a section's text sits in a batch file: request (line) and input index.
    A section over the model's window has several pieces; their vectors are averaged by ``weight``."""

    request: int
    position: int
    weight: int  # the piece's tokens


class PendingItem(NamedTuple):
    """A section on its way into a batch file, and the fingerprint of the text sent."""

    section_id: str
    digest: bytes
    attempt: int = 1  # the how-many-th job this section's text is in


class JobItem(NamedTuple):
    """A section a job covers: its fingerprint, and where the pieces of its text are in the file."""

    section_id: str
    digest: bytes
    slots: tuple[Slot, ...]
    attempt: int

    @property
    def tokens(self) -> int:
        return sum(slot.weight for slot in self.slots)


@dataclass(slots=True)
class BatchFile:
    """One planned input file: its JSONL lines (spooled, so a 200 MB file need not sit in memory),
    the sections it covers, and its size by every limit."""

    content: IO[bytes]
    items: list[JobItem] = field(default_factory=list)
    requests: int = 0
    inputs: int = 0
    bytes: int = 0
    tokens: int = 0


class NewJob(NamedTuple):
    """What is recorded of a job before the provider is asked to run it."""

    id: str
    settings: EmbeddingSettings
    collection: str | None
    endpoint: str
    input_file_id: str
    items: list[JobItem]
    requests: int
    inputs: int
    tokens: int


class BatchState(NamedTuple):
    """A batch as the provider last reported it (no ``batch_id``: the provider refused to create it)."""

    batch_id: str | None
    status: BatchStatus
    total: int
    completed: int
    failed: int
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: tuple[str, ...] = ()  # validation problems, "line N: code: message"


class JobRecord(NamedTuple):
    """A job as recorded: what it covers, where it stands, and what collecting it did."""

    id: str
    settings: EmbeddingSettings
    collection: str | None
    endpoint: str
    status: BatchStatus
    batch_id: str | None
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    owned: bool  # a live run is submitting it
    requests: int
    inputs: int
    sections: int
    tokens: int
    total: int
    completed: int
    failed: int
    age_s: float
    created_epoch: float
    collected: bool
    written: int
    failures: int
    changed: int
    retried: int
    errors: str | None

    @property
    def state(self) -> BatchState:
        """The batch as last polled (no batch id: the provider refused to create it, or not yet asked)."""
        return BatchState(self.batch_id, self.status, self.total, self.completed, self.failed, self.output_file_id,
                          self.error_file_id, tuple((self.errors or "").splitlines()))


class JobWrite(NamedTuple):
    """What writing a part of a job's results did: the rows still current (and so written, as
    ``WriteResult`` tells), and the sections left alone because they changed while the job ran."""

    successes: list[VectorRow]
    failures: list[FailureRow]
    result: WriteResult
    changed: list[str]


class FailureKind(Enum):
    """Why a request of a batch gave no vectors, as collecting acts on it."""

    REJECTED = "rejected"  # a 4xx for the request: isolate its inputs, never resend it unchanged
    TRANSIENT = "transient"  # 5xx, a reply that does not add up, no result at all: send again
    EXPIRED = "expired"  # the 24 h window closed first: send again (or synchronously, with fallback)
    CANCELLED = "cancelled"  # the user cancelled the batch: the sections stay due


class RequestResult(NamedTuple):
    """One line of an output or error file: a request's vectors by input index, or why it has none."""

    request: int | None  # from the custom_id; None for a line this client never wrote
    vectors: list[np.ndarray] | None
    tokens: int
    kind: FailureKind | None = None
    reason: str = ""


class ItemResult(NamedTuple):
    """What a finished job delivered for one section: its vector (pieces averaged), or why not."""

    item: JobItem
    vector: np.ndarray | None
    kind: FailureKind | None = None
    reason: str = ""
    alone: bool = False  # the request that failed held this one input only: nothing left to isolate


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Where a batch run stands, for its progress display."""

    phase: str  # "submitting" or "waiting"
    sections: int  # sections put into jobs so far by this run
    jobs: int  # open jobs being waited on
    requests_total: int
    requests_done: int  # completed + failed, as request_counts say
    statuses: dict[str, int]  # open jobs per status


BatchProgressCallback = Callable[[BatchProgress], None]


class BatchSummary(IngestSummary, total=False):
    """A batch run's summary: ``IngestSummary`` and what happened to the jobs."""

    jobs_submitted: int
    jobs_collected: int
    jobs_open: int  # still running (with --no-wait, or another model's)
    sections_submitted: int
    sections_pending: int  # in open jobs
    changed_count: int  # results not written: the section changed while its job ran
    retried_count: int  # sections sent again (expired, failed requests isolated)
    cancelled_count: int  # in a cancelled batch and never run: they stay due
    submitted_tokens: int  # counted before sending: what the jobs submitted will bill
    batch_tokens: int  # billed through the Batch API (at its price)
    sync_tokens: int  # billed synchronously (--fallback), at the full price


class BatchApiEmbedder(Protocol):
    """What the batch pipeline needs from an embedding service: planning files and the Batch API."""

    @property
    def settings(self) -> EmbeddingSettings: ...

    @property
    def endpoint(self) -> str:
        """Where its batches live (a batch id means something only there)."""
        ...

    def plan(self, items: Iterable[tuple[Hashable, str]], ready: list[EmbeddingOutcome], *,
             isolate: bool = False) -> Iterator[BatchFile]:
        """Batch files for ``(PendingItem, text)`` pairs within every limit; items that cannot be sent
        get their outcome in ``ready``. ``isolate``: one input per request."""
        ...

    def upload(self, planned: BatchFile) -> str: ...

    def create(self, input_file_id: str, job_id: str) -> BatchState: ...

    def find(self, job_id: str, input_file_id: str | None, since_epoch: float) -> BatchState | None:
        """The batch created for ``job_id`` (by a run that died before recording it), if any."""
        ...

    def retrieve(self, batch_id: str) -> BatchState: ...

    def cancel(self, batch_id: str) -> BatchState: ...

    def collect(self, items: list[JobItem], state: BatchState) -> JobResults:
        """The finished batch's result per item (every item once), its vectors joined on custom_id
        and matched by index."""
        ...


class BatchCapable(Protocol):
    """An embedding service that can also embed through the Batch API (``EmbeddingService`` is one)."""

    @property
    def settings(self) -> EmbeddingSettings: ...

    @property
    def total_tokens(self) -> int: ...

    def stream_embeddings(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[EmbeddingOutcome]: ...

    def generate_embedding(self, text: str) -> list[float]: ...

    def batch_api(self, limits: BatchLimits | None = None) -> BatchApiEmbedder: ...


class JobResults(Protocol):
    """A finished job's ``ItemResult`` per item, read as they come; ``billed_tokens`` grows with them."""

    billed_tokens: int

    def __iter__(self) -> Iterator[ItemResult]: ...
