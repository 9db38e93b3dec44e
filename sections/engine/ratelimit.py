"""One requests/tokens-per-minute limiter shared by every request in flight.

Running *at* a provider's limit instead of *into* it is what makes a long job fast: every 429
costs a round trip and a wait. The limiter keeps a token bucket per budget (requests, tokens),
set by the user or learned from the ``x-ratelimit-*`` headers, and corrects its estimate of the
server's bucket with each reply: the reply's ``remaining`` is the server's level when that
request was admitted, so the estimate adds the refill since then and subtracts what we sent
since then. A 429 pauses every dispatch for as long as the server asks.

Several processes on one key each see the same ``remaining`` and each spend it: three concurrent
syncs drew more 429s than successes. With a ``SharedBudget`` (the database's, for ``sections
watch``/``sync``), each admitted request also reserves its place in a schedule all processes
share, and waits for it; a 429 pushes that schedule for everyone.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Protocol

MAX_BACKOFF_S = 30.0


class SharedBudget(Protocol):
    """A rate budget shared with other processes."""

    def reserve(self, tokens: int, tpm: float | None, rpm: float | None) -> float:
        """Reserve one request of ``tokens``; the seconds to wait before sending it."""
        ...

    def pause(self, seconds: float, tokens: int, tpm: float | None, rpm: float | None) -> None:
        """The provider said wait ``seconds``: every process sharing the budget waits."""
        ...


class _Bucket:
    """A continuously refilled bucket; ``level`` may go negative when the server says so."""

    def __init__(self, per_minute: float, capacity: float | None, now: float):
        self.per_minute = float(per_minute)
        self.capacity = float(capacity if capacity is not None else per_minute)
        self.level = self.capacity
        self.stamp = now

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + self.rate * (now - self.stamp))
        self.stamp = now

    def wait_for(self, cost: float, now: float) -> float:
        self.refill(now)
        need = min(cost, self.capacity)  # a request bigger than the bucket goes when it is full
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, cost: float) -> None:
        self.level -= cost

    def sync(self, remaining: float, sent_since: float, admitted_at: float, now: float, slack: float) -> None:
        """Move our level to what the server's reply implies, down or up.

        ``remaining`` is the server's level when the request was admitted; since then the server
        has refilled, and has admitted (or will admit) what we sent after that request. Requests
        sent just after it may have overtaken it on the way, so differences within ``slack`` (about
        one request) are noise, not news. The level follows the server both ways: it counts every
        user of the key, so raising to it is as safe as lowering. Lowering only (as we once did)
        ratchets: each overtaking lowers the level a little and nothing brings it back, and under
        6M TPM the estimate settled 56k tokens (0.56 s of budget) below the server's.
        """
        self.refill(now)
        estimate = min(self.capacity, remaining + self.rate * (now - admitted_at)) - sent_since
        if abs(estimate - self.level) > slack:
            self.level = estimate


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the limiter remembers of one dispatched request, to read its reply's headers."""

    at: float
    tokens: int
    requests_sent: int  # everything dispatched before this request, counted even before limits are known
    tokens_sent: int
    unshared: bool = False  # sent before any limit was known: missing from the shared schedule


class RateLimiter:
    """Blocks each dispatch until both budgets allow it; thread-safe."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        learn: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._clock = clock
        self._cond = threading.Condition()
        now = clock()
        self._user_rpm, self._user_tpm = rpm, tpm
        self._requests = _Bucket(rpm, None, now) if rpm else None
        self._tokens = _Bucket(tpm, None, now) if tpm else None
        self._learn = learn
        self._paused_until = 0.0
        self._consecutive_429 = 0
        self._requests_sent = 0
        self._tokens_sent = 0
        self.shared: SharedBudget | None = None
        self._unshared = 0  # tokens sent before any limit was known, not yet in the shared schedule

    @property
    def tokens_per_minute(self) -> float | None:
        return self._tokens.per_minute if self._tokens else None

    @property
    def token_capacity(self) -> float | None:
        """The largest request the token budget can admit at once (None: unlimited)."""
        return self._tokens.capacity if self._tokens else None

    def acquire(self, tokens: int, cancelled: threading.Event | None = None) -> Ticket | None:
        """Wait until one request of ``tokens`` may go; None if ``cancelled`` was set meanwhile."""
        shared = self.shared
        # With a shared schedule, it alone paces the budgets: this process's own estimate (the
        # server's level, which others drain too) would add its wait to the schedule's.
        ticket = self._acquire_here(tokens, cancelled, pace=shared is None)
        if ticket is None or shared is None:
            return ticket
        with self._cond:
            if self._tokens is None and self._requests is None:
                return replace(ticket, unshared=True)  # its billed tokens are charged once a limit is known
            owed, self._unshared = self._unshared, 0
            tpm, rpm = self.tokens_per_minute, self._requests.per_minute if self._requests else None
        wait = shared.reserve(tokens + owed, tpm, rpm)
        if wait <= 0:
            return ticket
        if cancelled is None:
            time.sleep(wait)
        elif cancelled.wait(wait):
            return None
        return ticket

    def _acquire_here(self, tokens: int, cancelled: threading.Event | None, pace: bool) -> Ticket | None:
        with self._cond:
            while True:
                if cancelled is not None and cancelled.is_set():
                    return None
                now = self._clock()
                wait = max(
                    self._paused_until - now,
                    self._requests.wait_for(1, now) if self._requests and pace else 0.0,
                    self._tokens.wait_for(tokens, now) if self._tokens and pace else 0.0,
                )
                if wait <= 0:
                    ticket = Ticket(now, tokens, self._requests_sent, self._tokens_sent)
                    self._requests_sent += 1
                    self._tokens_sent += tokens
                    if self._requests:
                        self._requests.take(1)
                    if self._tokens:
                        self._tokens.take(tokens)
                    return ticket
                self._cond.wait(min(wait, 0.5))

    def observe(self, headers: Mapping[str, str], ticket: Ticket | None) -> None:
        """Learn limits and correct the buckets from a reply's ``x-ratelimit-*`` headers."""
        with self._cond:
            now = self._clock()
            for kind, user in (("requests", self._user_rpm), ("tokens", self._user_tpm)):
                limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
                remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
                bucket = self._requests if kind == "requests" else self._tokens
                if limit and self._learn:
                    per_minute = min(limit, user) if user else limit
                    if bucket is None:
                        bucket = _Bucket(per_minute, None, now)
                        if kind == "requests":
                            self._requests = bucket
                        else:
                            self._tokens = bucket
                    elif bucket.per_minute != per_minute:
                        bucket.per_minute = bucket.capacity = per_minute
                if bucket is not None and remaining is not None and ticket is not None:
                    if kind == "requests":
                        sent_since, slack = self._requests_sent - ticket.requests_sent - 1, 1
                    else:
                        sent_since, slack = self._tokens_sent - ticket.tokens_sent - ticket.tokens, ticket.tokens
                    bucket.sync(remaining, sent_since, ticket.at, now, slack)
            self._cond.notify_all()

    def billed(self, ticket: Ticket | None, tokens: int) -> None:
        """A reply's billed tokens: a request that went before any limit was known is charged to the
        shared schedule with its next reservation (its admission count was only an upper bound)."""
        if ticket is not None and ticket.unshared:
            with self._cond:
                self._unshared += tokens

    def succeeded(self) -> None:
        with self._cond:
            self._consecutive_429 = 0

    def rate_limited(self, retry_after: float | None, tokens: int = 0) -> float:
        """Pause every dispatch after a 429; returns the pause chosen (seconds).

        The server's ``retry-after`` is when *its* bucket will hold this request's ``tokens``, so
        our estimate of its level now is ``tokens - rate * retry_after``: resetting to that,
        rather than to zero, resumes exactly when the server will admit again.
        """
        with self._cond:
            self._consecutive_429 += 1
            hinted = retry_after is not None
            if retry_after is None:
                # No hint from the server: back off exponentially with jitter, shared by all.
                pause = min(MAX_BACKOFF_S, 0.25 * 2.0 ** (self._consecutive_429 - 1)) * (0.5 + random.random())
            else:
                pause = retry_after
            now = self._clock()
            self._paused_until = max(self._paused_until, now + pause)
            if self._tokens:
                self._tokens.refill(now)
                floor = tokens - self._tokens.rate * pause if hinted else 0.0
                self._tokens.level = min(self._tokens.level, floor)
            self._cond.notify_all()
            shared, tpm, rpm = self.shared, self.tokens_per_minute, self._requests.per_minute if self._requests else None
        if shared is not None:
            shared.pause(pause, tokens, tpm, rpm)
        return pause


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
