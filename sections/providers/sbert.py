"""A sentence-transformers model on torch, for a model folder that has no ONNX file.

This runtime comes with the ``torch`` extra (``pip install 'sections-pgvector[torch]'``); the
default model and any folder with an ONNX file run on ONNX Runtime instead (``providers/onnx.py``).
The Hugging Face libraries are put offline before they are imported, and loading passes
``local_files_only``, so nothing is ever fetched from a hub at run time. torch and
sentence-transformers are imported when the first model loads; a model is loaded once per process
and device and shared by every provider. ``threads`` sets torch's CPU threads, process-wide (torch
has one intra-op setting).
"""
from __future__ import annotations

import os

# Before anything imports huggingface_hub / transformers: they read these once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from sections.engine.errors import RequestRejected, TransientError
from sections.providers.base import HeadersCallback, Reply, reject_blank_inputs
from sections.providers.local import LocalModel, LocalModelError
from sections.providers.local_sizing import size
from sections.providers.local_tokenizer import LocalTokenizer

__all__ = ["SentenceTransformerProvider"]

_MODELS: dict[tuple[str, str], Any] = {}
_LOAD_LOCK = threading.Lock()


def _load(path: Path, device: str) -> Any:
    """The SentenceTransformer at ``path`` on ``device``, loaded on first use and then shared."""
    key = (str(path), device)
    with _LOAD_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        if "huggingface_hub" in sys.modules and os.environ.get("HF_HUB_OFFLINE") == "1":
            # Imported before us, so it did not see the variable: tell it directly.
            try:
                sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
            except AttributeError:
                pass
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call, unused-ignore]  # its "Loading weights" bar would litter CLI output
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as error:
            raise LocalModelError(
                f"cannot load the sentence-transformers model at {path}: {type(error).__name__}: {error}"
            ) from error
        model.eval()
        try:
            # One call before any concurrent ones: the fast tokenizer configures its truncation and
            # padding on its first call (a write that must not race with another thread's read);
            # later calls with the same settings only read it.
            model.encode(["warm-up"], show_progress_bar=False)
        except Exception as error:
            raise LocalModelError(f"the model at {path} loaded but cannot embed: {type(error).__name__}: {error}") from error
        _MODELS[key] = model
        return model


def _embedding_dimension(model: Any) -> int | None:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = getter()
    return None if dimension is None else int(dimension)


class SentenceTransformerProvider:
    """Embeds with a sentence-transformers model in this process; thread-safe.

    ``device`` defaults to ``"cuda"`` when torch sees a GPU, else ``"cpu"``.
    """

    def __init__(self, model: LocalModel, *, device: str | None = None, batch_size: int | None = None,
                 threads: int | None = None):
        import torch

        self.model_name = model.name
        self.model_path = model.folder
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = _load(model.folder, self.device)
        dimensions = _embedding_dimension(self._model)
        if not dimensions:
            raise LocalModelError(f"the model at {model.folder} does not say its embedding size")
        self.dimensions: int = int(dimensions)
        hf_tokenizer = self._model.tokenizer
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise LocalModelError(f"the model at {model.folder} has no fast tokenizer (tokenizer.json), "
                                  "which counting its tokens needs")
        window = int(self._model.max_seq_length or getattr(hf_tokenizer, "model_max_length", 512))
        self.tokenizer = LocalTokenizer(backend, window - hf_tokenizer.num_special_tokens_to_add(pair=False))

        sizing = size(self.tokenizer.window, on_gpu=not self.device.startswith("cpu"), batch_size=batch_size,
                      threads=threads)
        if sizing.threads is not None and torch.get_num_threads() != sizing.threads:
            torch.set_num_threads(sizing.threads)
        self.batch_size, self.concurrency, self.threads, self.limits = (sizing.batch_size, sizing.concurrency,
                                                                        sizing.threads, sizing.limits)

    def embed(self, texts: list[str], on_headers: HeadersCallback | None = None) -> Reply:
        """Unit-length float32 vectors, ``vectors[i]`` for ``texts[i]``; ``on_headers`` is unused."""
        if not texts:
            return Reply([], 0)
        reject_blank_inputs(texts)
        import torch

        try:
            counts = self.tokenizer.count_many(texts)
            array = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False)
        except torch.cuda.OutOfMemoryError:
            raise TransientError(f"out of GPU memory embedding {len(texts)} inputs") from None
        except (RuntimeError, MemoryError) as error:
            raise TransientError(f"local model failed: {type(error).__name__}: {error}") from None
        except (ValueError, TypeError) as error:
            raise RequestRejected(f"local model refused the input: {error}") from None
        array = np.asarray(array, dtype=np.float32)
        if array.shape != (len(texts), self.dimensions):
            raise TransientError(f"model returned shape {array.shape} for {len(texts)} inputs of size {self.dimensions}")
        if not np.isfinite(array).all():
            raise RequestRejected("model produced a vector with NaN or infinite values")
        window = self.tokenizer.window
        return Reply(list(array), sum(min(c, window) for c in counts))  # tokens the model actually read
