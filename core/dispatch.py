"""Runs many embedding requests at once, under one limiter, and turns replies into per-item outcomes.

Why it is shaped this way:
- Inputs are read in windows, so memory grows with the window and the requests in flight, never
  with the corpus; within a window identical texts are sent once and the work is packed evenly
  over the parallel slots (``core.batching``).
- Every request passes the shared ``RateLimiter`` before each attempt, so retries and 429s are
  coordinated with the budget instead of fighting it; the SDK's own retries are off.
- A request that keeps failing is split in halves until the inputs at fault are isolated: a poisoned
  text fails alone, with its reason, and its neighbours succeed.
- An outcome carries its caller's key; vectors are matched to inputs by the reply's ``index``
  inside the provider, so nothing can shift onto the wrong item.
"""
from __future__ import annotations

import random
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice
from dataclasses import dataclass, replace
from typing import Hashable, Iterable, Iterator, Protocol

import numpy as np

from core.batching import Limits, balance_target, pack
from core.errors import ProviderFatalError, RateLimited, RequestRejected, TransientError
from core.ratelimit import RateLimiter
from core.tokens import Tokenizer, plan_long_input
from core.usage import Usage


@dataclass(frozen=True, slots=True)
class EmbeddingOutcome:
    """The result for one caller item: a float32 vector, or the reason it failed."""

    key: Hashable
    vector: np.ndarray | None
    tokens: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5  # attempts of a single-input request before its input fails
    split_after: int = 2  # attempts of a multi-input request before it is split in halves
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    max_rate_limit_wait_s: float = 900.0  # give up on a request the server keeps refusing with 429

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)) * (0.5 + random.random())


class Provider(Protocol):
    def embed(self, texts: list[str], on_headers=None): ...


class _Job:
    """One caller item; long inputs wait for all their pieces. ``tokens`` is None until its one
    piece is counted (see ``_Unit``)."""

    __slots__ = ("key", "tokens", "left", "acc", "done")

    def __init__(self, key: Hashable, tokens: int, pieces: int):
        self.key, self.tokens, self.left, self.acc, self.done = key, tokens, pieces, None, False


class _Unit:
    """One distinct text to send, and the items (with their weights) waiting for its result.

    A unit remembers its result until its window is done, so a repeat of the same text met after
    the unit's request has completed is answered at once instead of being lost. ``tokens`` is
    exact once ``counted``; before that it is the tokenizer's upper bound, which packing and the
    limiter may use (a request within a limit by the bound is within it by the count).
    """

    __slots__ = ("text", "tokens", "counted", "chars", "waiters", "vector", "error")

    def __init__(self, text: str, tokens: int, counted: bool = True):
        self.text, self.tokens, self.counted, self.chars = text, tokens, counted, len(text)
        self.waiters: list[tuple[_Job, int | None]] = []  # weight None: the unit's own count
        self.vector: np.ndarray | None = None
        self.error: str | None = None


@dataclass(frozen=True, slots=True)
class _Request:
    units: list[_Unit]

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.units)


class Dispatcher:
    def __init__(
        self,
        provider: Provider,
        tokenizer: Tokenizer,
        limits: Limits,
        *,
        long_input: str,
        concurrency: int,
        limiter: RateLimiter,
        retry: RetryPolicy,
        usage: Usage,
        pool: ThreadPoolExecutor,
        window_texts: int = 4096,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.provider, self.tokenizer, self.limits = provider, tokenizer, limits
        self.long_input, self.concurrency = long_input, concurrency
        self.limiter, self.retry, self.usage = limiter, retry, usage
        self.pool, self.window_texts = pool, window_texts

    def run(self, items: Iterable[tuple[Hashable, str]], max_inputs: int | None = None) -> Iterator[EmbeddingOutcome]:
        """Yield one outcome per item as requests complete.

        If the provider refuses the run (ProviderFatalError), nothing new is sent, what is in flight
        is yielded, and the error is raised; items never answered get no outcome at all.
        """
        limits = self.limits if max_inputs is None else replace(self.limits, max_inputs=min(max_inputs, self.limits.max_inputs))
        ready: list[EmbeddingOutcome] = []
        requests = self._requests(items, limits, ready)
        retry_queue: deque[_Request] = deque()
        cancel = threading.Event()
        in_flight: dict[Future, _Request] = {}
        fatal: ProviderFatalError | None = None
        exhausted = False
        try:
            while True:
                while fatal is None and len(in_flight) < self.concurrency:
                    if retry_queue:
                        request = retry_queue.popleft()
                    elif not exhausted:
                        request = next(requests, None)
                        if request is None:
                            exhausted = True
                            continue
                    else:
                        break
                    in_flight[self.pool.submit(self._execute, request, cancel)] = request
                if ready:
                    yield from ready
                    ready.clear()
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    request = in_flight.pop(future)
                    try:
                        verdict, detail = future.result()
                    except ProviderFatalError as error:
                        fatal = fatal or error
                        cancel.set()
                        continue
                    if verdict == "ok":
                        self._deliver(request, detail, ready)
                    elif verdict == "cancelled":
                        continue  # never answered: no outcome, so a rerun picks these items up
                    elif verdict == "split":
                        half = len(request.units) // 2
                        self.usage.add(splits=1)
                        retry_queue.extendleft([_Request(request.units[half:]), _Request(request.units[:half])])
                    else:
                        self._fail(request.units, detail, ready)
            if fatal is not None:
                raise fatal
        finally:
            cancel.set()
            for future in in_flight:
                future.cancel()

    # -- reading and packing -------------------------------------------------------------------

    def _requests(self, items: Iterable[tuple[Hashable, str]], limits: Limits, ready: list) -> Iterator[_Request]:
        iterator = iter(items)
        capacity = self.limiter.token_capacity
        if capacity is not None and capacity < limits.max_request_tokens:
            # A request bigger than the server's token bucket can never be admitted.
            limits = replace(limits, max_request_tokens=max(limits.max_input_tokens, int(capacity)))
        while True:
            window = list(islice(iterator, self.window_texts))
            if not window:
                return
            total_chars = sum(len(text) for _, text in window if isinstance(text, str))
            def target(total_chars=total_chars) -> float:
                return balance_target(total_chars, self.concurrency, self.limiter.tokens_per_minute)

            for units in pack(self._units(window, limits, ready), limits, target):
                yield _Request(units)

    def _units(self, window: list, limits: Limits, ready: list) -> Iterator[_Unit]:
        """Plan each item of a window; yield each distinct text once, as soon as it is planned.

        A text whose upper bound already fits one input is not counted here but in the worker that
        sends it (see ``_execute``): counting is the slowest step of planning.
        """
        units: dict[str, _Unit] = {}
        for key, text in window:
            if not isinstance(text, str) or not text.strip():
                ready.append(EmbeddingOutcome(key, None, 0, "empty text"))
                continue
            bound = self.tokenizer.bound(text)
            if bound is not None and bound <= limits.max_input_tokens:
                job, pieces = _Job(key, None, 1), [(text, bound, False)]
            else:
                count = self.tokenizer.count(text)
                try:
                    planned = plan_long_input(text, count, self.tokenizer, limits.max_input_tokens, self.long_input)
                except ValueError as error:
                    ready.append(EmbeddingOutcome(key, None, count, str(error)))
                    continue
                job = _Job(key, sum(p.tokens for p in planned), len(planned))
                pieces = [(p.text, p.tokens, True) for p in planned]
            for piece_text, tokens, counted in pieces:
                weight = tokens if counted else None
                unit = units.get(piece_text)
                if unit is None:
                    unit = units[piece_text] = _Unit(piece_text, tokens, counted)
                    unit.waiters.append((job, weight))
                    yield unit
                elif unit.vector is not None:
                    self._settle(job, unit.vector, unit.tokens if weight is None else weight, ready)
                elif unit.error is not None:
                    self._settle_failure(job, unit.error, unit.tokens, ready)
                else:
                    unit.waiters.append((job, weight))

    # -- one request, in a worker thread ------------------------------------------------------------

    def _execute(self, request: _Request, cancel: threading.Event) -> tuple[str, object]:
        """Send one request until it succeeds or is given up; its units leave exactly counted.

        Units are counted before sending only when a token budget is known, since the limiter then
        needs exact costs. Before that (the first wave of a run), the request goes out on its upper
        bound and is counted once its reply is in: counting 350k tokens costs ~0.08 s of CPU, which
        would otherwise hold back the later requests of the first wave. The limiter is then charged
        the bound, which overstates what was sent before any limit was known; replies to later
        requests bring it back (it follows the server both ways).
        """
        try:
            return self._attempts(request, cancel)
        finally:
            self._count(request)

    def _count(self, request: _Request) -> None:
        for unit in request.units:
            if not unit.counted:  # a unit is in one request at a time, so no lock is needed
                unit.tokens, unit.counted = self.tokenizer.count(unit.text), True

    def _attempts(self, request: _Request, cancel: threading.Event) -> tuple[str, object]:
        texts = [u.text for u in request.units]
        attempts = 0
        waited = 0.0
        while True:
            if self.limiter.token_capacity is not None:
                self._count(request)
            ticket = self.limiter.acquire(request.tokens, cancel)
            if ticket is None:
                return "cancelled", None
            self.usage.add(attempts=1)
            try:
                reply = self.provider.embed(texts, on_headers=lambda headers: self.limiter.observe(headers, ticket))
            except RateLimited as error:
                self.usage.add(rate_limited=1)
                waited += self.limiter.rate_limited(error.retry_after, request.tokens)
                if waited > self.retry.max_rate_limit_wait_s:
                    return self._give_up(request, f"{error}; still refused after waiting {waited:.0f} s")
                continue
            except RequestRejected as error:
                return self._give_up(request, str(error))
            except TransientError as error:
                attempts += 1
                limit = self.retry.split_after if len(texts) > 1 else self.retry.max_attempts
                if attempts >= limit:
                    return self._give_up(request, f"{error} (after {attempts} attempts)")
                self.usage.add(retries=1)
                if cancel.wait(self.retry.backoff(attempts)):
                    return "cancelled", None
                continue
            self.limiter.succeeded()
            self._count(request)
            billed = reply.billed_tokens if reply.billed_tokens is not None else request.tokens
            self.usage.add(requests=1, tokens=billed, inputs=len(texts))
            return "ok", reply

    @staticmethod
    def _give_up(request: _Request, reason: str) -> tuple[str, object]:
        return ("split", reason) if len(request.units) > 1 else ("fail", reason)

    # -- assembling outcomes -----------------------------------------------------------------------

    def _deliver(self, request: _Request, reply, ready: list) -> None:
        for unit, vector in zip(request.units, reply.vectors):
            unit.vector = vector
            for job, weight in unit.waiters:
                self._settle(job, vector, unit.tokens if weight is None else weight, ready)
            unit.waiters.clear()

    def _fail(self, units: list[_Unit], reason: str, ready: list) -> None:
        for unit in units:
            unit.error = reason
            for job, _ in unit.waiters:
                self._settle_failure(job, reason, unit.tokens, ready)
            unit.waiters.clear()

    @staticmethod
    def _settle(job: _Job, vector: np.ndarray, weight: int, ready: list) -> None:
        """Add one piece's vector to its item; emit the item when its last piece is in."""
        if job.done:
            return
        if job.tokens is None:  # a one-piece item, counted when it was sent
            job.tokens = weight
        job.left -= 1
        if job.left == 0 and job.acc is None:
            job.done = True
            ready.append(EmbeddingOutcome(job.key, vector, job.tokens))
            return
        part = vector.astype(np.float64) * weight
        job.acc = part if job.acc is None else job.acc + part
        if job.left == 0:
            job.done = True
            norm = np.linalg.norm(job.acc)
            mean = (job.acc / norm if norm > 0 else job.acc).astype(np.float32)
            ready.append(EmbeddingOutcome(job.key, mean, job.tokens))

    @staticmethod
    def _settle_failure(job: _Job, reason: str, unit_tokens: int, ready: list) -> None:
        if not job.done:
            job.done = True
            ready.append(EmbeddingOutcome(job.key, None, unit_tokens if job.tokens is None else job.tokens, reason))
