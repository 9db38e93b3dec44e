"""Packs inputs into requests that every provider limit accepts, spread over the parallel slots.

Counting inputs is not enough (the seed's defect): OpenAI also caps the tokens summed over one
request at 300,000, so 1,000 sections of ~350 tokens in one request is a 400 for all of them.
And one huge request is slow: latency grows with tokens, so the same work spread evenly over
the requests that may run at once finishes in a fraction of the time.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Sequence


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


MIN_REQUEST_TOKENS = 4096  # below this, spreading work saves no time and spends requests-per-minute
# Above this, bigger requests save nothing either, and a rate limiter works in coarser steps.
MAX_TARGET_TOKENS = 32_768


def pack(token_counts: Sequence[int], limits: Limits, parallel: int = 1, min_request_tokens: int = MIN_REQUEST_TOKENS) -> list[range]:
    """Split positions ``0..n-1`` into consecutive ranges, one per request.

    Every range holds at most ``limits.max_inputs`` inputs and ``limits.max_request_tokens``
    tokens (each count must already be within ``max_input_tokens``), and the work is balanced so
    that about ``parallel`` requests exist when there is enough work for them (requests are not
    made smaller than ``min_request_tokens`` for it, nor aimed above ``MAX_TARGET_TOKENS``).
    """
    n = len(token_counts)
    if n == 0:
        return []
    total = sum(token_counts)
    share = min(MAX_TARGET_TOKENS, ceil(total / max(1, parallel)))
    target_tokens = min(limits.max_request_tokens, max(min_request_tokens, share))
    requests: list[range] = []
    start, tokens = 0, 0
    for i, t in enumerate(token_counts):
        if t > limits.max_input_tokens:
            raise ValueError(f"input {i} has {t} tokens, over max_input_tokens={limits.max_input_tokens}")
        size = i - start
        if size and (
            size >= limits.max_inputs or tokens + t > limits.max_request_tokens or tokens >= target_tokens
        ):
            requests.append(range(start, i))
            start, tokens = i, 0
        tokens += t
    requests.append(range(start, n))
    return requests
