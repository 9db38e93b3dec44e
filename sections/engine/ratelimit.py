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
share, and waits for it; a 429 pushes that schedule for everyone. The schedule grants the burst the
provider grants (its bucket's capacity: remaining + rate x reset, from the headers) and follows
every reply's ``remaining`` as this process's own estimate does, so a short job spends the
provider's burst at once instead of pacing as if the bucket had started empty.
"""
from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Protocol

from sections.rate_budget import Kind, Rate, Rates, Reading, Reservation

MAX_BACKOFF_S = 30.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class SharedBudget(Protocol):
    """A rate budget shared with other processes."""

    def reserve(self, tokens: int, rates: Rates) -> Reservation | None:
        """Reserve one request of ``tokens``: when it may go, and its place in the schedule."""
        ...

    def rates(self) -> Rates:
        """The limits the schedule knows: learned by any worker, in this run or an earlier one."""
        ...

    def observe(self, readings: list[Reading]) -> None:
        """What a reply said the provider still allows: the schedule follows it."""
        ...

    def pause(self, seconds: float, tokens: int, rates: Rates) -> None:
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
    reservation: Reservation | None = None  # its place in a shared schedule; None: sent before any limit was known


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

    @property
    def tokens_per_minute(self) -> float | None:
        return self._tokens.per_minute if self._tokens else None

    @property
    def token_capacity(self) -> float | None:
        """The largest request the token budget can admit at once (None: unlimited)."""
        return self._tokens.capacity if self._tokens else None

    def share(self, budget: SharedBudget) -> None:
        """Draw on ``budget`` from now on, starting from the limits it already knows: a worker that
        starts after another learned them (or after an earlier run) sends no request blind."""
        with self._cond:
            self.shared = budget
            if not self._learn or (self._tokens is not None and self._requests is not None):
                return
        known = budget.rates()
        with self._cond:
            now = self._clock()
            if self._tokens is None and known.tokens is not None:
                self._tokens = _Bucket(known.tokens.per_minute, known.tokens.capacity, now)
            if self._requests is None and known.requests is not None:
                self._requests = _Bucket(known.requests.per_minute, known.requests.capacity, now)

    def _rates(self) -> Rates:
        """The budgets as known now (call under the lock)."""
        return Rates(*(Rate(b.per_minute, b.capacity) if b else None for b in (self._tokens, self._requests)))

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
                return ticket  # the first replies' readings bring what it spent into the schedule
            rates = self._rates()
        reservation = shared.reserve(tokens, rates)
        if reservation is None:  # the schedule's database is away: the request goes unscheduled
            return ticket
        if reservation.wait_s > 0:
            if cancelled is None:
                time.sleep(reservation.wait_s)
            elif cancelled.wait(reservation.wait_s):
                return None
        return replace(ticket, at=self._clock(), reservation=reservation)

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
        readings: list[Reading] = []
        with self._cond:
            now = self._clock()
            for kind, user in ((Kind.REQUESTS, self._user_rpm), (Kind.TOKENS, self._user_tpm)):
                limit = _number(headers.get(f"x-ratelimit-limit-{kind.value}"))
                remaining = _number(headers.get(f"x-ratelimit-remaining-{kind.value}"))
                reset = _duration_s(headers.get(f"x-ratelimit-reset-{kind.value}"))
                bucket = self._requests if kind is Kind.REQUESTS else self._tokens
                if limit and self._learn:
                    per_minute = min(limit, user) if user else limit
                    # What the provider grants at once: its level plus what it refills until full.
                    granted = remaining + per_minute / 60.0 * reset if remaining is not None and reset is not None else None
                    capacity = min(per_minute, granted) if granted else per_minute
                    if bucket is None:
                        bucket = _Bucket(per_minute, capacity, now)
                        if kind is Kind.REQUESTS:
                            self._requests = bucket
                        else:
                            self._tokens = bucket
                    else:
                        bucket.per_minute, bucket.capacity = per_minute, capacity
                if bucket is not None and remaining is not None and ticket is not None:
                    if kind is Kind.REQUESTS:
                        sent_since, slack = self._requests_sent - ticket.requests_sent - 1, 1
                        reserved = ticket.reservation.requests_reserved if ticket.reservation else None
                    else:
                        sent_since, slack = self._tokens_sent - ticket.tokens_sent - ticket.tokens, ticket.tokens
                        reserved = ticket.reservation.tokens_reserved if ticket.reservation else None
                    bucket.sync(remaining, sent_since, ticket.at, now, slack)
                    if self.shared is None:
                        continue
                    # A reading from before any limit was known only ever lowers the schedule: no noise to allow for.
                    readings.append(Reading(kind, Rate(bucket.per_minute, bucket.capacity), remaining,
                                            now - ticket.at, reserved, slack if reserved is not None else 0))
            self._cond.notify_all()
            shared = self.shared
        if shared is not None and readings:
            shared.observe(readings)

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
            shared, rates = self.shared, self._rates()
        if shared is not None:
            shared.pause(pause, tokens, rates)
        return pause


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _duration_s(value: str | None) -> float | None:
    """OpenAI's reset durations ("120ms", "1.5s", "6m0s") in seconds; None when absent or unreadable."""
    if not value:
        return None
    parts = _DURATION.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value.strip():
        return _number(value)  # a bare number of seconds
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)
