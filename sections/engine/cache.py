"""A bounded cache of vectors, for callers that embed the same query or text again.

Keyed by everything that decides a vector (model, dimensions, long-input policy, text), so a
service never answers from a vector made under other settings. Vectors are stored read-only, so a
caller cannot change what later callers get.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

__all__ = ["VectorCache"]


class VectorCache:
    """Least recently used first out; thread-safe."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            vector = self._data.get(key)
            if vector is None:
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: Hashable, vector: np.ndarray) -> None:
        if self.maxsize <= 0:
            return
        vector = np.array(vector, dtype=np.float32)
        vector.setflags(write=False)
        with self._lock:
            self._data[key] = vector
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
