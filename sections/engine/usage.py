"""What a service has spent: tokens, requests, retries, 429s and an estimated cost in USD."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

# USD per million input tokens, from OpenAI's price list; unknown models (local, self-hosted) cost 0.
PRICE_PER_MILLION_TOKENS = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}


BATCH_PRICE_FACTOR = 0.5  # the Batch API bills half the synchronous price


def estimate_cost_usd(model: str, tokens: int, *, batch: bool = False) -> float:
    """The price of ``tokens`` on ``model``, synchronous or (``batch``) through the Batch API."""
    return tokens * PRICE_PER_MILLION_TOKENS.get(model, 0.0) / 1_000_000 * (BATCH_PRICE_FACTOR if batch else 1.0)


@dataclass
class Usage:
    """Counters updated from many worker threads; read them any time."""

    model: str
    tokens: int = 0  # billed by the provider (its ``usage``), summed over successful requests
    requests: int = 0  # successful requests
    attempts: int = 0  # every request sent, whatever came of it
    retries: int = 0  # resends after a transient failure
    rate_limited: int = 0  # 429 rate_limit_exceeded received
    splits: int = 0  # requests split in halves to isolate failing inputs
    inputs: int = 0  # inputs embedded (pieces of long inputs count one each)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    @property
    def cost_usd(self) -> float:
        return estimate_cost_usd(self.model, self.tokens)

    def as_dict(self) -> dict[str, str | int | float]:
        with self._lock:
            return {
                "model": self.model,
                "tokens": self.tokens,
                "requests": self.requests,
                "attempts": self.attempts,
                "retries": self.retries,
                "rate_limited": self.rate_limited,
                "splits": self.splits,
                "inputs": self.inputs,
                "cost_usd": self.cost_usd,
            }
