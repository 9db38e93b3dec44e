"""Test inputs for ingest: ``FakeStreamingEmbedder``, a tiny deterministic stand-in for
``EmbeddingService.stream_embeddings``, and ``StreamedSections``, a corpus made as it is read.

Shared by the store tests (real Postgres) and the pipeline tests (``memory_backend.MemoryBackend``).
"""
from __future__ import annotations

import hashlib
import random
import threading
import types
from collections.abc import Callable

import numpy as np

from core.embedding_service import EmbeddingOutcome
from sections.engine.errors import ProviderFatalError
from sections.records import EmbeddingSettings
from sections.engine.tokens import LongInputPolicy


class FakeStreamingEmbedder:
    """Test double with EmbeddingService's streaming contract; vectors are a hash of the text.

    - reads its input lazily, ``window`` items at a time, and yields that window's outcomes in a
      shuffled order (the real engine's outcomes come back in any order too);
    - texts containing ``POISON`` fail with a reason; ``fatal_after=n`` raises ProviderFatalError
      once n outcomes were yielded (what the engine does on quota/auth errors);
    - records every text it was asked to embed in ``embedded``, and the most input items it held
      at once in ``max_held``.
    """

    def __init__(self, model="fake-model", dimensions=16, long_input="average", *, window=64,
                 fatal_after=None, seed=0):
        self.model, self.dimensions, self.long_input = model, dimensions, long_input
        self.settings = EmbeddingSettings(model, dimensions, LongInputPolicy(long_input))
        self.window, self.fatal_after = window, fatal_after
        self.rng = random.Random(seed)
        self.embedded: list[str] = []
        self.max_held = 0
        self.usage = types.SimpleNamespace(tokens=0, requests=0)
        self._lock = threading.Lock()

    @property
    def total_tokens(self) -> int:
        return self.usage.tokens

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(f"{self.model}/{self.dimensions}/{text}".encode()).digest()[:8], "big")
        v = np.random.default_rng(seed).standard_normal(self.dimensions or 16).astype(np.float32)
        return v / np.linalg.norm(v)

    def generate_embedding(self, text: str) -> list[float]:
        return self.vector(text).tolist()

    def stream_embeddings(self, items):
        yielded = 0
        iterator = iter(items)
        while True:
            window = []
            for key, text in iterator:
                window.append((key, text))
                if len(window) >= self.window:
                    break
            if not window:
                return
            self.max_held = max(self.max_held, len(window))
            self.rng.shuffle(window)
            for key, text in window:
                if self.fatal_after is not None and yielded >= self.fatal_after:
                    raise ProviderFatalError("insufficient_quota: you exceeded your current quota")
                tokens = len(text.split())
                with self._lock:
                    self.embedded.append(text)
                    self.usage.tokens += tokens
                if "POISON" in text:
                    yield EmbeddingOutcome(key, None, tokens, "rejected by provider: poison")
                else:
                    yield EmbeddingOutcome(key, self.vector(text), tokens)
                yielded += 1


class StreamedSections:
    """``n`` sections made as they are read; ``pulled`` counts how many were, to show a run streams.

    ``before(i)``, if given, runs before section ``i`` is handed out (to wait for something).
    """

    def __init__(self, n: int, before: Callable[[int], None] | None = None):
        self.n, self.before, self.pulled = n, before, 0

    def __iter__(self):
        for i in range(self.n):
            if self.before is not None:
                self.before(i)
            self.pulled += 1
            yield {"id": f"g{i}", "title": "", "content": f"streamed section {i}"}
