"""A local model's own tokenizer, for the engine: counting and cutting text in content tokens.

Both local runtimes (ONNX Runtime and sentence-transformers) count with the model's fast (Rust)
tokenizer from the ``tokenizers`` library: the same one the model reads its input with, so a piece
of ``window`` tokens plus the special tokens ([CLS]/[SEP] for BERT) fits the model and nothing is
silently truncated. The copy used here has truncation and padding off (the ``tokenizer.json`` of
MiniLM truncates at 128 tokens) and is never reconfigured afterwards, so it is safe to call from
several threads at once.
"""
from __future__ import annotations

from typing import Any

__all__ = ["LocalTokenizer"]


class LocalTokenizer:
    """Counts and cuts text with the model's tokenizer, counting content tokens only."""

    def __init__(self, tokenizer: Any, window: int):
        """``tokenizer`` is a ``tokenizers.Tokenizer`` (copied, not changed); ``window`` the content
        tokens that fit the model (its sequence length minus the special tokens)."""
        from tokenizers import Tokenizer

        self.window = window
        self._fast: Any = Tokenizer.from_str(tokenizer.to_str())
        self._fast.no_truncation()
        self._fast.no_padding()

    def count(self, text: str) -> int:
        return len(self._fast.encode(text, add_special_tokens=False))

    def bound(self, text: str) -> None:
        """None: counting is cheap next to the model, so there is nothing to gain from a bound."""
        return None

    def count_many(self, texts: list[str]) -> list[int]:
        """Counts for many texts at once (the Rust tokenizer works on them in parallel)."""
        return [len(e) for e in self._fast.encode_batch(list(texts), add_special_tokens=False)]

    def split(self, text: str, max_tokens: int) -> list[tuple[str, int]]:
        """Consecutive pieces of at most ``max_tokens`` content tokens, cut between words."""
        if max_tokens < 1:
            raise ValueError("max_tokens must be positive")
        encoding = self._fast.encode(text, add_special_tokens=False)
        offsets, words = encoding.offsets, encoding.word_ids
        n = len(offsets)
        pieces: list[tuple[str, int]] = []
        start = 0
        while start < n:
            end = min(start + max_tokens, n)
            if end < n and words[end] is not None and words[end] == words[end - 1]:
                # Do not cut inside a word: "##" continuation pieces would re-tokenize differently.
                cut = end
                while cut > start and words[cut - 1] == words[end]:
                    cut -= 1
                if cut > start:
                    end = cut
            while True:
                stop = offsets[end][0] if end < n else len(text)
                piece = text[offsets[start][0]:stop].strip()
                count = self.count(piece)
                if count <= max_tokens or end - start <= 1:
                    break
                end -= max(1, count - max_tokens)  # a cut can tokenize differently: shrink and recount
            if count > max_tokens:
                # One token cut out of a longer word can read as several on its own ("##oa" -> "o ##a");
                # only when max_tokens is tiny. Fall back to characters, each at most one token.
                pieces.extend(self._fit_characters(piece, max_tokens))
            elif count:
                pieces.append((piece, count))
            start = end
        return pieces

    def _fit_characters(self, text: str, max_tokens: int) -> list[tuple[str, int]]:
        pieces: list[tuple[str, int]] = []
        start = 0
        while start < len(text):
            end, best = start + 1, None
            while end <= len(text):
                count = self.count(text[start:end])
                if count > max_tokens:
                    break
                best = (end, count)
                end += 1
            end, count = best if best else (start + 1, self.count(text[start:start + 1]))
            if text[start:end].strip() and count:
                pieces.append((text[start:end].strip(), count))
            start = end
        return pieces
