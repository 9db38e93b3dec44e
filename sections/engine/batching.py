"""Packs inputs into requests that every provider limit accepts, spread over the parallel slots.

Counting inputs is not enough (the seed's defect): OpenAI also caps the tokens summed over one
request at 300,000, so 1,000 sections of ~350 tokens in one request is a 400 for all of them.
And one huge request is slow: latency grows with tokens, so the same work spread evenly over
the requests that may run at once finishes in a fraction of the time.

Packing streams: a request is handed on as soon as it is full, so the first one is on the wire
while later inputs are still being counted. Balance is judged by characters (known before
counting); limits by exact token counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol, TypeVar

MIN_REQUEST_CHARS = 16_000  # ~4k tokens: below this, spreading saves no time and spends requests-per-minute
MAX_TARGET_CHARS = 128_000  # ~32k tokens: above this, bigger requests save nothing, and a limiter works in coarse steps
# Under a token budget a request holds at most this much of a second's budget: the limiter admits
# whole requests, so it trails the budget by about one request, and the last reply's latency grows
# with its size; both cost a run about a request's worth of time. Measured (5,000 sections under
# 6M TPM, as in python -m bench w2): 29k-token requests ran at 0.95 of the ideal with four 429s,
# 5k-token requests at 0.96 with one.
RATE_SLICE_S = 0.05
CHARS_PER_TOKEN = 4  # English text in cl100k_base; sizes requests only, never decides a limit


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may hold; OpenAI's by default, configurable for compatible servers."""

    max_inputs: int = 2048
    max_request_tokens: int = 300_000
    max_input_tokens: int = 8191

    def __post_init__(self) -> None:
        if min(self.max_inputs, self.max_request_tokens, self.max_input_tokens) < 1:
            raise ValueError(f"limits must be positive: {self}")
        if self.max_input_tokens > self.max_request_tokens:
            raise ValueError("max_input_tokens cannot exceed max_request_tokens")


class Packable(Protocol):
    tokens: int
    chars: int


T = TypeVar("T", bound=Packable)


def balance_target(total_chars: int, parallel: int, tokens_per_minute: float | None = None) -> float:
    """Characters per request so that about ``parallel`` requests share the work, and each holds
    at most ``RATE_SLICE_S`` of a known token budget."""
    target = min(MAX_TARGET_CHARS, total_chars / max(1, parallel))
    if tokens_per_minute:
        target = min(target, tokens_per_minute / 60 * RATE_SLICE_S * CHARS_PER_TOKEN)
    return max(MIN_REQUEST_CHARS, target)


def pack(units: Iterable[T], limits: Limits,
         target_chars: float | Callable[[], float] = MAX_TARGET_CHARS) -> Iterator[list[T]]:
    """Group consecutive units into requests, yielding each as soon as it is complete.

    Every request holds at most ``limits.max_inputs`` units and ``limits.max_request_tokens``
    tokens; a request is closed once it reaches ``target_chars`` (a callable is asked afresh for
    each request, so a budget learned mid-run resizes the requests still to come). Each unit's
    tokens must already be within ``limits.max_input_tokens``.
    """
    target = target_chars if callable(target_chars) else lambda: target_chars
    current: list[T] = []
    tokens = chars = 0
    limit = target()
    for unit in units:
        if unit.tokens > limits.max_input_tokens:
            raise ValueError(f"an input has {unit.tokens} tokens, over max_input_tokens={limits.max_input_tokens}")
        if current and (len(current) >= limits.max_inputs or tokens + unit.tokens > limits.max_request_tokens
                        or chars >= limit):
            yield current
            current, tokens, chars = [], 0, 0
            limit = target()
        current.append(unit)
        tokens += unit.tokens
        chars += unit.chars
    if current:
        yield current
