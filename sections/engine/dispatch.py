"""Runs many embedding requests at once, under one limiter, and turns replies into per-item outcomes.

Why it is shaped this way:
- Inputs are read in windows, so memory grows with the window and the requests in flight, never
  with the corpus; each window is planned into units (``sections.engine.assemble``) and packed evenly over
  the parallel slots (``sections.engine.batching``).
- Every request passes the shared ``RateLimiter`` before each attempt, so retries and 429s are
  coordinated with the budget instead of fighting it; the SDK's own retries are off.
- A request that keeps failing is split in halves until the inputs at fault are isolated: a poisoned
  text fails alone, with its reason, and its neighbours succeed.
- An outcome carries its caller's key; vectors are matched to inputs by the reply's ``index``
  inside the provider and the count is checked here, so nothing can shift onto the wrong item.
- A stop (the ``stop`` event, set from any thread or a signal handler) is read between requests,
  never raised inside one: no request is sent after it, the replies in flight get
  ``STOP_GRACE_S`` to arrive (they are paid for), the rest are abandoned to their threads.
- Counting tokens is the costliest CPU work of a run (~0.15 s for 1,000 sections of ~350
  tokens, holding the GIL), so it is never in a request's way: requests go out on their units'
  upper bounds, the dispatcher's own thread counts them while they are in flight, and a caller
  that wants no per-item counts (``count_items=False``) is spared it, the bill being the total.
- A hold (the ``hold`` event: the database that keeps the answers is away) is read at the same
  place: nothing new is sent while it is set, the replies in flight are still yielded, and sending
  resumes when it is cleared. An answer nobody can keep is not worth buying.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from enum import Enum
from itertools import islice
from typing import NamedTuple

from sections.engine.assemble import Request, deliver, fail, plan_units
from sections.engine.batching import Limits, balance_target, pack
from sections.engine.errors import Interrupted, ProviderFatalError, RateLimited, RequestRejected, TransientError
from sections.providers.base import Provider, Reply
from sections.engine.ratelimit import RateLimiter
from sections.records import EmbeddingOutcome
from sections.engine.tokens import LongInputPolicy, Tokenizer
from sections.engine.usage import Usage

__all__ = ["STOP_GRACE_S", "Dispatcher", "EmbeddingOutcome", "RetryPolicy", "Verdict", "started_pool"]

# After a stop, replies in flight get this long to arrive: they are paid for, and most requests
# take well under it; a command interrupted by Ctrl-C must still end within a few seconds.
STOP_GRACE_S = 2.0
STOP_POLL_S = 0.05  # how often a run waiting for replies looks at its stop event


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5  # attempts of a single-input request before its input fails
    split_after: int = 2  # attempts of a multi-input request before it is split in halves
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    max_rate_limit_wait_s: float = 900.0  # give up on a request the server keeps refusing with 429

    def backoff(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)) * (0.5 + random.random()))


def started_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads for requests in flight, every one of them running on return.

    A ThreadPoolExecutor starts a thread per submit until it has them all, and each start waits
    until the new thread runs. Inside a run's first wave that wait queues behind the workers
    already building and sending requests (for the GIL, up to a switch interval each way), so the
    wave's last request left 0.05–0.2 s late on 2 CPUs. Started before anything competes, all of
    them take a few milliseconds.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed")
    ready = threading.Barrier(workers + 1)
    for _ in range(workers):
        pool.submit(ready.wait)  # no thread is free again until all have started: each submit starts one
    ready.wait()
    return pool


class Verdict(Enum):
    """How one request ended, as the run loop acts on it."""

    OK = "ok"  # every input has its vector
    SPLIT = "split"  # given up as a whole: send its halves to isolate the inputs at fault
    FAIL = "fail"  # a single input given up: it fails with the reason
    CANCELLED = "cancelled"  # never answered (the run stopped): no outcome, so a rerun picks it up


class Attempted(NamedTuple):
    verdict: Verdict
    reply: Reply | None = None
    reason: str = ""
    transient: bool = False  # given up for the provider's state, not for the inputs


class Dispatcher:
    def __init__(
        self,
        provider: Provider,
        tokenizer: Tokenizer,
        limits: Limits,
        *,
        long_input: LongInputPolicy,
        concurrency: int,
        limiter: RateLimiter,
        retry: RetryPolicy,
        usage: Usage,
        pool: ThreadPoolExecutor,
        window_texts: int = 4096,
        stop: threading.Event | None = None,
        stop_grace_s: float = STOP_GRACE_S,
        count_items: bool = True,
        hold: threading.Event | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.provider, self.tokenizer, self.limits = provider, tokenizer, limits
        self.long_input, self.concurrency = LongInputPolicy.parse(long_input), concurrency
        self.limiter, self.retry, self.usage = limiter, retry, usage
        self.pool, self.window_texts, self.stop = pool, window_texts, stop
        self.stop_grace_s = stop_grace_s
        # False: an outcome's tokens is None unless its input had to be counted anyway (a long one,
        # a token budget to keep, a reply without a bill).
        self.count_items = count_items
        self.hold = hold

    def run(self, items: Iterable[tuple[Hashable, str]], max_inputs: int | None = None) -> Iterator[EmbeddingOutcome]:
        """Yield one outcome per item as requests complete.

        If the provider refuses the run (ProviderFatalError), nothing new is sent, what is in flight
        is yielded, and the error is raised; items never answered get no outcome at all. A stop
        ends the same way, except that the replies in flight are awaited for ``STOP_GRACE_S`` only
        and ``Interrupted`` is raised (unless nothing was left undone).
        """
        limits = self.limits if max_inputs is None else replace(self.limits, max_inputs=min(max_inputs, self.limits.max_inputs))
        ready: list[EmbeddingOutcome] = []
        requests = self._requests(items, limits, ready)
        retry_queue: deque[Request] = deque()
        cancel = threading.Event()
        replied = threading.Event()  # set as each request ends: the dispatcher stops counting then
        in_flight: dict[Future[Attempted], Request] = {}
        fatal: ProviderFatalError | None = None
        stopped_at: float | None = None  # when the stop was seen
        exhausted = False
        try:
            while True:
                while fatal is None and not self._stopping() and not self._holding() and len(in_flight) < self.concurrency:
                    if retry_queue:
                        request = retry_queue.popleft()
                    elif not exhausted:
                        next_request = next(requests, None)
                        if next_request is None:
                            exhausted = True
                            continue
                        request = next_request
                    else:
                        break
                    future = self.pool.submit(self._execute, request, cancel)
                    future.add_done_callback(lambda _: replied.set())
                    in_flight[future] = request
                if stopped_at is None and self._stopping():
                    stopped_at = time.monotonic()
                    cancel.set()  # requests waiting on the limiter or a backoff give up now
                if ready:
                    yield from ready
                    ready.clear()
                if not in_flight:
                    if fatal is None and stopped_at is None and self._holding():
                        self._wait_while_held()
                        continue
                    break
                timeout = None if self.stop is None and self.hold is None else STOP_POLL_S
                if stopped_at is not None:
                    timeout = stopped_at + self.stop_grace_s - time.monotonic()
                    if timeout <= 0:
                        break  # abandoned: their replies, if any, are dropped, and a rerun sends them again
                for future in self._await(in_flight, timeout, replied):
                    request = in_flight.pop(future)
                    try:
                        attempted = future.result()
                    except ProviderFatalError as error:
                        fatal = fatal or error
                        cancel.set()
                        continue
                    if self.count_items and attempted.verdict is not Verdict.CANCELLED:
                        request.count(self.tokenizer)  # what the wait left uncounted: outcomes carry exact counts
                    if attempted.verdict is Verdict.OK and attempted.reply is not None:
                        deliver(request, attempted.reply, ready)
                    elif attempted.verdict is Verdict.SPLIT:
                        first, second = request.halves()
                        self.usage.add(splits=1)
                        retry_queue.extendleft([second, first])
                    elif attempted.verdict is Verdict.FAIL:
                        fail(request.units, attempted.reason, ready, attempted.transient)
            if fatal is not None:
                raise fatal
            if stopped_at is not None and (in_flight or retry_queue or not exhausted):
                raise Interrupted(f"stopped on request; {len(in_flight)} request(s) in flight abandoned",
                                  sum(len(request.units) for request in in_flight.values()))
        finally:
            cancel.set()
            for future in in_flight:
                future.cancel()

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _await(self, in_flight: dict[Future[Attempted], Request], timeout: float | None,
               replied: threading.Event) -> set[Future[Attempted]]:
        """The requests that end within ``timeout``; until one does, count the units in flight.

        Requests go out on their units' upper bounds (see ``_execute``), and this thread has
        nothing else to do while they are on the way, so it counts them then, oldest request
        first, one unit at a time so that a reply is taken up at once. Counted after the replies
        instead (by the workers, as before), the counting of 1,000 sections (~0.15 s holding the
        GIL, and the encoding's first load, ~0.2 s) queued behind the last replies and delayed
        every outcome. A one-input request is left to its bill.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = (unit for request in list(in_flight.values()) if self.count_items and len(request.units) > 1
                   for unit in request.units if not unit.counted)
        for unit in waiting:
            if replied.is_set() or (deadline is not None and time.monotonic() >= deadline):
                break
            unit.count(self.tokenizer)
        replied.clear()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = wait(in_flight, timeout=left, return_when=FIRST_COMPLETED)
        return done
    def _holding(self) -> bool:
        return self.hold is not None and self.hold.is_set()

    def _wait_while_held(self) -> None:
        """Nothing in flight and nothing to be sent: wait a moment for the hold to lift (or a stop)."""
        if self.stop is not None:
            self.stop.wait(STOP_POLL_S)
        else:
            time.sleep(STOP_POLL_S)

    # -- reading and packing -------------------------------------------------------------------

    def _requests(self, items: Iterable[tuple[Hashable, str]], limits: Limits,
                  ready: list[EmbeddingOutcome]) -> Iterator[Request]:
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

            def target(total_chars: int = total_chars) -> float:
                return balance_target(total_chars, self.concurrency, self.limiter.tokens_per_minute)

            units = plan_units(window, self.tokenizer, limits, self.long_input, ready)
            for packed in pack(units, limits, target):
                yield Request(packed)

    # -- one request, in a worker thread ------------------------------------------------------------

    def _execute(self, request: Request, cancel: threading.Event) -> Attempted:
        """Send one request until it succeeds or is given up.

        Units are counted here before sending only when a token budget is known, since the limiter
        then needs exact costs. Before that (the first wave of a run), the request goes out on its
        upper bound, so that counting never holds back a send, and the dispatcher counts it while
        it is in flight (``_await``); a reply without a bill is counted here, for the usage. The
        limiter is then charged the bound, which overstates what was sent before any limit was
        known; replies to later requests bring it back (it follows the server both ways).
        """
        texts = [u.text for u in request.units]
        attempts = 0
        waited = 0.0
        while True:
            if self.limiter.token_capacity is not None:
                request.count(self.tokenizer)
            ticket = self.limiter.acquire(request.tokens, cancel)
            if ticket is None:
                return Attempted(Verdict.CANCELLED)
            self.usage.add(attempts=1)
            try:
                reply = self.provider.embed(texts, on_headers=lambda headers: self.limiter.observe(headers, ticket))
                if len(reply.vectors) != len(texts):
                    raise TransientError(f"reply holds {len(reply.vectors)} vectors for {len(texts)} inputs")
            except RateLimited as error:
                self.usage.add(rate_limited=1)
                waited += self.limiter.rate_limited(error.retry_after, request.tokens)
                if waited > self.retry.max_rate_limit_wait_s:
                    return self._give_up(request, f"{error}; still refused after waiting {waited:.0f} s", True)
                continue
            except RequestRejected as error:
                return self._give_up(request, str(error))
            except TransientError as error:
                attempts += 1
                limit = self.retry.split_after if len(texts) > 1 else self.retry.max_attempts
                if attempts >= limit:
                    return self._give_up(request, f"{error} (after {attempts} attempts)", True)
                self.usage.add(retries=1)
                if cancel.wait(self.retry.backoff(attempts)):
                    return Attempted(Verdict.CANCELLED)
                continue
            self.limiter.succeeded()
            only = request.units[0]
            if len(request.units) == 1 and not only.counted and reply.billed_tokens is not None:
                # One input's bill is its count, by the server's own tokenizer: a query that fits by
                # its bound is never counted here (a CLI search then never loads the encoding).
                only.tokens, only.counted = reply.billed_tokens, True
            if reply.billed_tokens is None:
                request.count(self.tokenizer)
            billed = reply.billed_tokens if reply.billed_tokens is not None else request.tokens
            self.usage.add(requests=1, tokens=billed, inputs=len(texts))
            return Attempted(Verdict.OK, reply)

    @staticmethod
    def _give_up(request: Request, reason: str, transient: bool = False) -> Attempted:
        return Attempted(Verdict.SPLIT if len(request.units) > 1 else Verdict.FAIL, reason=reason, transient=transient)
