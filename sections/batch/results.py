"""A finished batch's result files turned into one result per section it covers.

Lines come back in any order, in two files (output and errors); each is joined on its custom_id
to the request it answers, and each vector goes, by its index inside that request, to every
section waiting on that input (identical texts were sent once) in the slot it was planned for.
A section cut into pieces gets the synchronous path's mean (``sections.engine.assemble.mean_of_pieces``)
once its last piece is in. Results are handed on as soon as they are complete, so memory holds
only the sections still missing a piece, never the job's vectors. Whatever did not come back
says why, so the collector can retry, isolate or fail it by the rules.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from sections.engine.assemble import mean_of_pieces
from sections.batch.records import BatchState, BatchStatus, FailureKind, ItemResult, JobItem, RequestResult, custom_id

__all__ = ["CollectedJob"]

_UNANSWERED = {BatchStatus.CANCELLED: FailureKind.CANCELLED, BatchStatus.EXPIRED: FailureKind.EXPIRED}
ReadResults = Callable[[str, Mapping[int, int]], Iterator[RequestResult]]


class CollectedJob:
    """Iterate it once: an ``ItemResult`` per item; ``billed_tokens`` sums the usage of the replies read."""

    def __init__(self, items: list[JobItem], state: BatchState, read: ReadResults):
        self.items, self.state, self.read = items, state, read
        self.billed_tokens = 0

    def __iter__(self) -> Iterator[ItemResult]:
        items, state = self.items, self.state
        if state.status is BatchStatus.FAILED:  # refused as a whole (validation): nothing ran
            reason = "batch failed: " + ("; ".join(state.errors) or "no reason given")
            yield from (ItemResult(item, None, FailureKind.REJECTED, reason, alone=True) for item in items)
            return
        sizes: dict[int, int] = {}  # request → inputs it holds
        waiting: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (request, position) → (item, slot)
        for number, item in enumerate(items):
            for slot_number, slot in enumerate(item.slots):
                sizes[slot.request] = max(sizes.get(slot.request, 0), slot.position + 1)
                waiting.setdefault((slot.request, slot.position), []).append((number, slot_number))
        left = [len(item.slots) for item in items]
        pieces: dict[int, list[tuple[np.ndarray, int] | None]] = {}
        failed: dict[int, RequestResult] = {}
        answered: set[int] = set()
        for file_id in (state.output_file_id, state.error_file_id):
            for result in self.read(file_id, sizes) if file_id else ():
                if result.request is None or result.request in answered:
                    continue  # the first answer to a request stands
                answered.add(result.request)
                if result.vectors is None:
                    failed[result.request] = result
                    continue
                self.billed_tokens += result.tokens
                for position, vector in enumerate(result.vectors):
                    for number, slot_number in waiting.get((result.request, position), ()):
                        item = items[number]
                        held = pieces.setdefault(number, [None] * len(item.slots))
                        held[slot_number] = (vector, item.slots[slot_number].weight)
                        left[number] -= 1
                        if left[number] == 0:
                            del pieces[number]
                            yield ItemResult(item, mean_of_pieces([piece for piece in held if piece is not None]))
        for number, item in enumerate(items):
            if left[number]:
                yield self._missing(item, failed, sizes)

    def _missing(self, item: JobItem, failed: Mapping[int, RequestResult], sizes: Mapping[int, int]) -> ItemResult:
        """Why an item has no vector: its first failed request's reason, or no answer at all (a batch
        cancelled or expired before it ran anything may have no files)."""
        for slot in item.slots:
            if slot.request in failed:
                failure = failed[slot.request]
                return ItemResult(item, None, failure.kind, failure.reason, alone=sizes[slot.request] == 1)
        kind = _UNANSWERED.get(self.state.status, FailureKind.TRANSIENT)
        return ItemResult(item, None, kind, f"no result for {custom_id(item.slots[0].request)} in the batch's files "
                                            f"(batch {self.state.status.value})")
