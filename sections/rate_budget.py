"""What a limiter and the rate budget it shares with other processes say to each other.

The engine's limiter (``engine/ratelimit.py``) learns a provider's limits from its replies; the
budget all workers share lives in the database (``postgres/budget.py``). Neither imports the
other, so the values that travel between them are named here.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    """The two budgets a provider keeps per key, as its ``x-ratelimit-*-{kind}`` headers name them."""

    TOKENS = "tokens"
    REQUESTS = "requests"


@dataclass(frozen=True, slots=True)
class Rate:
    """One budget: the provider refills ``per_minute`` and its bucket holds ``capacity`` (the burst
    it grants at once; a minute's worth unless its reset header says less)."""

    per_minute: float
    capacity: float

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


@dataclass(frozen=True, slots=True)
class Rates:
    """The budgets known so far; None: that budget is not limited, or not known yet."""

    tokens: Rate | None
    requests: Rate | None


@dataclass(frozen=True, slots=True)
class Reservation:
    """One request's place in the shared schedule: how long to wait before sending it, and the
    schedule's running totals once it was counted (so a reply can tell what was reserved after it)."""

    wait_s: float
    tokens_reserved: float
    requests_reserved: float


@dataclass(frozen=True, slots=True)
class Reading:
    """What one reply said of one budget: the provider's ``remaining`` when it admitted the request,
    ``age_s`` seconds ago. ``reserved`` is the schedule's total after that request's reservation;
    None for a request sent before any limit was known, which is missing from the schedule, so
    its reading may only lower the schedule's level, never raise it. Differences within ``slack``
    units (about one request, which may have overtaken another on the way) are noise."""

    kind: Kind
    rate: Rate
    remaining: float
    age_s: float
    reserved: float | None
    slack: float
