"""Planning inputs into units to send, and assembling replies back into one outcome per item.

Why it is shaped this way:
- Within a window identical texts are sent once: a ``Unit`` is one distinct text, and every item
  waiting for it is told its result.
- A long input becomes several pieces under the long-input policy; its ``Job`` waits for all of
  them and takes their token-weighted mean, renormalised.
- Results travel from a reply to a unit by position in the *request* (the provider matched them
  to inputs by the reply's ``index``) and from a unit to items by reference, so nothing can shift
  onto the wrong item.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import numpy as np

from sections.engine.batching import Limits
from sections.providers.base import Reply
from sections.records import EmbeddingOutcome
from sections.engine.tokens import LongInputPolicy, Tokenizer, plan_long_input

__all__ = ["Job", "Request", "Unit", "deliver", "fail", "mean_of_pieces", "plan_units"]


class Job:
    """One caller item; long inputs wait for all their pieces. ``tokens`` is None until its one
    piece is counted (see ``Unit``), and stays None if nobody counts it."""

    __slots__ = ("key", "tokens", "left", "acc", "done")

    def __init__(self, key: Hashable, tokens: int | None, pieces: int):
        self.key, self.tokens, self.left = key, tokens, pieces
        self.acc: np.ndarray | None = None
        self.done = False


class Unit:
    """One distinct text to send, and the items (with their weights) waiting for its result.

    A unit remembers its result until its window is done, so a repeat of the same text met after
    the unit's request has completed is answered at once instead of being lost. ``tokens`` is
    exact once ``counted``; before that it is the tokenizer's upper bound, which packing and the
    limiter may use (a request within a limit by the bound is within it by the count).
    """

    __slots__ = ("text", "tokens", "counted", "chars", "waiters", "vector", "error")

    def __init__(self, text: str, tokens: int, counted: bool = True):
        self.text, self.tokens, self.counted, self.chars = text, tokens, counted, len(text)
        self.waiters: list[tuple[Job, int | None]] = []  # weight None: the unit's own count
        self.vector: np.ndarray | None = None
        self.error: str | None = None

    def count(self, tokenizer: Tokenizer) -> None:
        """Replace the bound by the exact count. A text always counts the same, so two threads that
        count one unit at once (the dispatcher while its request is in flight, a worker that needs
        the count first) agree."""
        if not self.counted:
            self.tokens, self.counted = tokenizer.count(self.text), True

    @property
    def exact(self) -> int | None:
        """The count, or None while only the bound is known."""
        return self.tokens if self.counted else None


@dataclass(frozen=True, slots=True)
class Request:
    units: list[Unit]

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.units)

    def count(self, tokenizer: Tokenizer) -> None:
        for unit in self.units:
            unit.count(tokenizer)

    def halves(self) -> tuple[Request, Request]:
        half = len(self.units) // 2
        return Request(self.units[:half]), Request(self.units[half:])


def plan_units(window: list[tuple[Hashable, str]], tokenizer: Tokenizer, limits: Limits,
               policy: LongInputPolicy, ready: list[EmbeddingOutcome]) -> Iterator[Unit]:
    """Plan each item of a window; yield each distinct text once, as soon as it is planned.

    A text whose upper bound already fits one input is not counted here but while its request
    is in flight (see ``sections.engine.dispatch``): counting is the slowest step of planning. Items that cannot
    be sent (empty, or too long under ``fail``) get their outcome in ``ready`` at once.
    """
    units: dict[str, Unit] = {}
    for key, text in window:
        if not isinstance(text, str) or not text.strip():
            ready.append(EmbeddingOutcome(key, None, 0, "empty text"))
            continue
        bound = tokenizer.bound(text)
        pieces: list[tuple[str, int, bool]]
        if bound is not None and bound <= limits.max_input_tokens:
            job, pieces = Job(key, None, 1), [(text, bound, False)]
        else:
            count = tokenizer.count(text)
            try:
                planned = plan_long_input(text, count, tokenizer, limits.max_input_tokens, policy)
            except ValueError as error:
                ready.append(EmbeddingOutcome(key, None, count, str(error)))
                continue
            job = Job(key, sum(p.tokens for p in planned), len(planned))
            pieces = [(p.text, p.tokens, True) for p in planned]
        for piece_text, tokens, counted in pieces:
            weight = tokens if counted else None
            unit = units.get(piece_text)
            if unit is None:
                unit = units[piece_text] = Unit(piece_text, tokens, counted)
                unit.waiters.append((job, weight))
                yield unit
            elif unit.vector is not None:
                _settle(job, unit.vector, unit.exact if weight is None else weight, ready)
            elif unit.error is not None:
                _settle_failure(job, unit.error, unit.exact, ready)
            else:
                unit.waiters.append((job, weight))


def deliver(request: Request, reply: Reply, ready: list[EmbeddingOutcome]) -> None:
    """Hand each unit its vector (``reply.vectors[i]`` is input ``i``'s), and each waiting item on."""
    for unit, vector in zip(request.units, reply.vectors, strict=True):  # the dispatcher checked the count
        unit.vector = vector
        for job, weight in unit.waiters:
            _settle(job, vector, unit.exact if weight is None else weight, ready)
        unit.waiters.clear()


def fail(units: list[Unit], reason: str, ready: list[EmbeddingOutcome], transient: bool = False) -> None:
    """Every item waiting on these units fails with ``reason``."""
    for unit in units:
        unit.error = reason
        for job, _ in unit.waiters:
            _settle_failure(job, reason, unit.exact, ready, transient)
        unit.waiters.clear()


def _settle(job: Job, vector: np.ndarray, weight: int | None, ready: list[EmbeddingOutcome]) -> None:
    """Add one piece's vector to its item; emit the item when its last piece is in."""
    if job.done:
        return
    if job.tokens is None:  # a one-piece item: its unit's count (None if nobody counted it)
        job.tokens = weight
    job.left -= 1
    if job.left == 0 and job.acc is None:
        job.done = True
        ready.append(EmbeddingOutcome(job.key, vector, job.tokens))
        return
    assert weight is not None  # the pieces of a long input were counted when it was cut
    part = _weighted(vector, weight)
    job.acc = part if job.acc is None else job.acc + part
    if job.left == 0:
        job.done = True
        ready.append(EmbeddingOutcome(job.key, _renormalised(job.acc), job.tokens))


def _weighted(vector: np.ndarray, weight: int) -> np.ndarray:
    return vector.astype(np.float64) * weight


def _renormalised(acc: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(acc)
    return (acc / norm if norm > 0 else acc).astype(np.float32)


def mean_of_pieces(pieces: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """A long input's vector from its pieces' ``(vector, weight)``, in piece order: the same
    token-weighted mean, renormalised, that the synchronous path takes (one piece: its vector)."""
    if len(pieces) == 1:
        return pieces[0][0]
    acc = _weighted(*pieces[0])
    for vector, weight in pieces[1:]:
        acc = acc + _weighted(vector, weight)
    return _renormalised(acc)


def _settle_failure(job: Job, reason: str, unit_tokens: int | None, ready: list[EmbeddingOutcome],
                    transient: bool = False) -> None:
    if not job.done:
        job.done = True
        ready.append(EmbeddingOutcome(job.key, None, unit_tokens if job.tokens is None else job.tokens, reason,
                                      transient))
