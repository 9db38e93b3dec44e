"""Planning Batch API input files: the engine's units and requests, packed into files within every limit.

The planning is the synchronous path's (``sections.engine.assemble.plan_units``: identical texts sent once,
inputs over the model's window cut into pieces under the long-input policy; ``sections.engine.batching.pack``:
requests within the provider's inputs and tokens per request), so the vector a section gets from a
batch is the one the synchronous path would store. Token counts are exact: they decide packing and
the cost estimate. A file is cut only between windows of items, so all the pieces of a section, and
all the sections that share a text, are in one file, one job; a window too big for one file is
planned again in halves. Requests are packed full (no balancing over parallel slots: the provider
schedules a batch itself).
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from sections.engine.assemble import Unit, plan_units
from sections.batch.records import BatchFile, BatchLimits, JobItem, PendingItem, Slot, custom_id
from sections.engine.batching import Limits, pack
from sections.records import EmbeddingOutcome
from sections.engine.tokens import LongInputPolicy, Tokenizer

__all__ = ["ENDPOINT", "SPOOL_BYTES", "plan_files"]

ENDPOINT = "/v1/embeddings"
SPOOL_BYTES = 16 * 1024 * 1024  # a file bigger than this is spooled to disk while it is planned
WINDOW = 4096  # items planned together: identical texts within a window are sent once
_FULL = float("inf")  # pack requests to the limits, not to a balance target


@dataclass(slots=True)
class _Window:
    """A window's requests (request bodies, numbered from 0) and items, before a file numbers them."""

    bodies: list[bytes]
    inputs: list[int]
    items: list[JobItem]
    tokens: int

    @property
    def size(self) -> int:
        return sum(map(len, self.bodies))


def _line(number: int, body: bytes) -> bytes:
    head = json.dumps({"custom_id": custom_id(number), "method": "POST", "url": ENDPOINT})[:-1].encode()
    return b'%s,"body":%s}\n' % (head, body)


_LINE_OVERHEAD = len(_line(0, b""))


def _plan_window(window: list[tuple[Hashable, str]], tokenizer: Tokenizer, limits: Limits, policy: LongInputPolicy,
                 body: dict[str, Any], ready: list[EmbeddingOutcome]) -> _Window:
    """The window's units packed into requests, and where each item's pieces went."""
    units: list[Unit] = list(plan_units(window, tokenizer, limits, policy, ready))
    for unit in units:
        unit.count(tokenizer)
    slots: dict[Hashable, list[Slot]] = {}
    planned = _Window([], [], [], 0)
    for number, request in enumerate(pack(units, limits, _FULL)):
        for position, unit in enumerate(request):
            for job, weight in unit.waiters:
                slots.setdefault(job.key, []).append(Slot(number, position, unit.tokens if weight is None else weight))
        planned.bodies.append(json.dumps({**body, "input": [unit.text for unit in request]},
                                         ensure_ascii=False).encode("utf-8"))
        planned.inputs.append(len(request))
        planned.tokens += sum(unit.tokens for unit in request)
    for key, found in slots.items():
        assert isinstance(key, PendingItem)  # plan_files passes PendingItem keys only
        planned.items.append(JobItem(key.section_id, key.digest, tuple(found), key.attempt))
    return planned


def _fits(file: BatchFile | None, window: _Window, limits: BatchLimits, digits: int) -> bool:
    """Whether ``window`` fits into ``file`` (None: an empty one); custom ids counted at their longest."""
    requests, inputs, size = (file.requests, file.inputs, file.bytes) if file is not None else (0, 0, 0)
    added = len(window.bodies)
    return (requests + added <= limits.max_requests and inputs + sum(window.inputs) <= limits.max_inputs
            and size + window.size + added * (_LINE_OVERHEAD + digits) <= limits.max_bytes)


Planner = Callable[[list[tuple[Hashable, str]], list[EmbeddingOutcome]], _Window]


def _windows_that_fit(window: list[tuple[Hashable, str]], plan: Planner, limits: BatchLimits, digits: int,
                      ready: list[EmbeddingOutcome]) -> Iterator[_Window]:
    """The window planned, or planned again in halves until each part fits an empty file."""
    refused: list[EmbeddingOutcome] = []  # kept only from the plan that is used, so none is told twice
    planned = plan(window, refused)
    if _fits(None, planned, limits, digits):
        ready += refused
        yield planned
    elif len(window) > 1:
        half = len(window) // 2
        yield from _windows_that_fit(window[:half], plan, limits, digits, ready)
        yield from _windows_that_fit(window[half:], plan, limits, digits, ready)
    else:
        ready.append(EmbeddingOutcome(window[0][0], None, planned.tokens, "too large for one batch file: embed it "
                                                                          "without --batch-api"))


def _new_file() -> BatchFile:
    return BatchFile(tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))


def _append(file: BatchFile, window: _Window) -> None:
    offset = file.requests
    for number, request_body in enumerate(window.bodies):
        line = _line(offset + number, request_body)
        file.content.write(line)
        file.bytes += len(line)
    file.requests += len(window.bodies)
    file.inputs += sum(window.inputs)
    file.tokens += window.tokens
    file.items += [item._replace(slots=tuple(slot._replace(request=slot.request + offset) for slot in item.slots))
                   for item in window.items]


def plan_files(items: Iterable[tuple[Hashable, str]], tokenizer: Tokenizer, limits: Limits, file_limits: BatchLimits,
               policy: LongInputPolicy, body: dict[str, Any], ready: list[EmbeddingOutcome], *,
               isolate: bool = False, window: int = WINDOW) -> Iterator[BatchFile]:
    """Batch input files for ``(PendingItem, text)`` pairs, each within ``file_limits``, its requests
    within ``limits``; ``body`` holds the request fields besides the input (model, dimensions,
    encoding). Items that cannot be sent (empty, too long under ``fail``) get their outcome in
    ``ready``. ``isolate``: one input per request, to find the inputs a provider refuses. Each
    file is yielded as soon as it is full, its content rewound."""
    if isolate:
        limits = replace(limits, max_inputs=1)
    digits = len(str(file_limits.max_requests))

    def plan(part: list[tuple[Hashable, str]], refused: list[EmbeddingOutcome]) -> _Window:
        return _plan_window(part, tokenizer, limits, policy, body, refused)

    iterator = iter(items)
    current = _new_file()
    while chunk := list(islice(iterator, window)):
        for planned in _windows_that_fit(chunk, plan, file_limits, digits, ready):
            if current.requests and not _fits(current, planned, file_limits, digits):
                current.content.seek(0)
                yield current
                current = _new_file()
            _append(current, planned)
    if current.requests:
        current.content.seek(0)
        yield current
    else:
        current.content.close()
