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
from typing import Iterable, Iterator, Protocol, TypeVar

MIN_REQUEST_CHARS = 16_000  # ~4k tokens: below this, spreading saves no time and spends requests-per-minute
MAX_TARGET_CHARS = 128_000  # ~32k tokens: above this, bigger requests save nothing, and a limiter works in coarse steps


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may hold; OpenAI's by default, configurable for compatible servers."""

    max_inputs: int = 2048
    max_request_tokens: int = 300_000
    max_input_tokens: int = 8191

    def __post_init__(self):
        if min(self.max_inputs, self.max_request_tokens, self.max_input_tokens) < 1:
            raise ValueError(f"limits must be positive: {self}")
        if self.max_input_tokens > self.max_request_tokens:
            raise ValueError("max_input_tokens cannot exceed max_request_tokens")


class Packable(Protocol):
    tokens: int
    chars: int


T = TypeVar("T", bound=Packable)


def balance_target(total_chars: int, parallel: int) -> float:
    """Characters per request so that about ``parallel`` requests share the work."""
    return min(MAX_TARGET_CHARS, max(MIN_REQUEST_CHARS, total_chars / max(1, parallel)))


def pack(units: Iterable[T], limits: Limits, target_chars: float = MAX_TARGET_CHARS) -> Iterator[list[T]]:
    """Group consecutive units into requests, yielding each as soon as it is complete.

    Every request holds at most ``limits.max_inputs`` units and ``limits.max_request_tokens``
    tokens; a request is closed once it reaches ``target_chars``. Each unit's tokens must already
    be within ``limits.max_input_tokens``.
    """
    current: list[T] = []
    tokens = chars = 0
    for unit in units:
        if unit.tokens > limits.max_input_tokens:
            raise ValueError(f"an input has {unit.tokens} tokens, over max_input_tokens={limits.max_input_tokens}")
        if current and (len(current) >= limits.max_inputs or tokens + unit.tokens > limits.max_request_tokens
                        or chars >= target_chars):
            yield current
            current, tokens, chars = [], 0, 0
        current.append(unit)
        tokens += unit.tokens
        chars += unit.chars
    if current:
        yield current
