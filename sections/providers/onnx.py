"""A local model on ONNX Runtime: onnxruntime and the ``tokenizers`` library, no torch, no transformers.

It does what sentence-transformers does with the same files, so the vectors are the same (the
fidelity test compares them, ``test/test_onnx_fidelity.py``):
- each text is stripped, tokenized with the model's ``tokenizer.json`` (lowercased first when
  ``sentence_bert_config.json`` says ``do_lower_case``), truncated to the model's window (its
  ``max_seq_length``, 256 for MiniLM, special tokens included) and padded to the longest in the
  batch;
- the graph's token embeddings are pooled as the model's pooling config says (mean over the
  attention mask, the [CLS] token, or the max), then L2-normalized;
- a request's inputs are sorted by length and run in batches, so little compute goes to padding.

Execution: the CUDA execution provider when ``onnxruntime-gpu`` is installed and sees a GPU (else
the CPU); on a CPU, every core computes (``local_sizing``: requests in flight x intra-op threads =
the cores). A session is loaded once per process, file, device and thread count, and shared: its
``run`` is thread-safe.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from sections.engine.errors import RequestRejected, TransientError
from sections.providers.base import HeadersCallback, Reply, reject_blank_inputs
from sections.providers.local import LocalModel, LocalModelError, verify_checksum
from sections.providers.local_sizing import size
from sections.providers.local_tokenizer import LocalTokenizer

__all__ = ["OnnxProvider", "Pooling", "onnx_devices"]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_WINDOW = 512  # a model that states no window: BERT's


class Pooling(str, Enum):
    """How token embeddings become one vector (sentence-transformers' names)."""

    MEAN = "mean"
    CLS = "cls"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    window: int  # tokens the model reads, special tokens included
    pooling: Pooling
    lowercase: bool


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as error:
        raise LocalModelError(f"cannot read {path}: {error}") from None
    return data if isinstance(data, dict) else {}


def _json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _pooling(folder: Path) -> Pooling:
    """From the Pooling module's config (``modules.json`` says where; ``1_Pooling`` by default);
    mean pooling when there is none, as sentence-transformers does for a bare transformer."""
    path = "1_Pooling"
    for module in _json_list(folder / "modules.json"):
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
            path = module.get("path", path)
    config = _json(folder / path / "config.json")
    mode = config.get("pooling_mode")
    if mode is None:
        flags = [name for name in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                                   "lasttoken") if config.get(f"pooling_mode_{name}")]
        mode = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}.get(flags[0], flags[0]) if flags else "mean"
        if len(flags) > 1:
            raise LocalModelError(f"{folder / path}: pooling by several modes at once ({', '.join(flags)}) is not supported")
    try:
        return Pooling(mode)
    except ValueError:
        raise LocalModelError(f"{folder / path}: pooling mode {mode!r} is not supported (mean, cls or max)") from None


def read_config(folder: Path) -> ModelConfig:
    """The window, pooling and casing sentence-transformers would use for the files in ``folder``."""
    sbert = _json(folder / "sentence_bert_config.json")
    window = sbert.get("max_seq_length")
    if not window:  # sentence-transformers: the smaller of the model's positions and the tokenizer's limit
        limits = [_json(folder / "config.json").get("max_position_embeddings"),
                  _json(folder / "tokenizer_config.json").get("model_max_length")]
        known = [int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < 1_000_000]
        window = min(known) if known else DEFAULT_WINDOW
    return ModelConfig(int(window), _pooling(folder), bool(sbert.get("do_lower_case", False)))


def onnx_devices() -> list[str]:
    """The execution providers this onnxruntime build has (``CUDAExecutionProvider`` with onnxruntime-gpu)."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


_SESSIONS: dict[tuple[str, str, int | None], Any] = {}
_LOAD_LOCK = threading.Lock()


def _session(model: LocalModel, device: str, threads: int | None) -> Any:
    """The InferenceSession for the model's file, loaded (after its checksum) on first use, then shared."""
    assert model.onnx_file is not None
    key = (str(model.onnx_file), device, threads)
    with _LOAD_LOCK:
        session = _SESSIONS.get(key)
        if session is not None:
            return session
        verify_checksum(model)
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # errors only: its warnings would litter the command's output
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = [CUDA, CPU] if device == "cuda" and CUDA in onnx_devices() else [CPU]
        try:
            session = onnxruntime.InferenceSession(str(model.onnx_file), options, providers=providers)
        except Exception as error:
            raise LocalModelError(f"cannot load the ONNX model {model.onnx_file}: {type(error).__name__}: {error}") from None
        _SESSIONS[key] = session
        return session


class OnnxProvider:
    """Embeds with an ONNX model in this process; thread-safe."""

    def __init__(self, model: LocalModel, *, device: str | None = None, batch_size: int | None = None,
                 threads: int | None = None):
        if model.onnx_file is None:
            raise ValueError("an ONNX provider needs the model's .onnx file")
        self.model_name = model.name
        self.model_path = model.onnx_file
        self.config = read_config(model.folder)
        self._encoder = self._tokenizer(model.folder, self.config.window)
        special = self._encoder.num_special_tokens_to_add(False)
        self.tokenizer = LocalTokenizer(self._encoder, self.config.window - special)

        wanted = device or ("cuda" if CUDA in onnx_devices() else "cpu")
        if wanted not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {wanted!r}: choose cpu or cuda")
        sizing = size(self.tokenizer.window, on_gpu=wanted == "cuda", batch_size=batch_size, threads=threads)
        self._session = _session(model, wanted, sizing.threads)
        # onnxruntime falls back to the CPU when the CUDA libraries cannot load: say what runs.
        self.device = "cuda" if self._session.get_providers()[0] == CUDA else "cpu"
        if self.device != wanted:
            sizing = size(self.tokenizer.window, on_gpu=False, batch_size=batch_size, threads=threads)
        self.batch_size, self.concurrency, self.threads, self.limits = (sizing.batch_size, sizing.concurrency,
                                                                        sizing.threads, sizing.limits)
        self._inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise LocalModelError(f"{model.onnx_file} takes {sorted(self._inputs)}, not input_ids and attention_mask")
        try:
            self.dimensions = int(self._forward(["warm-up"]).shape[1])
        except Exception as error:
            raise LocalModelError(f"the model {model.onnx_file} loaded but cannot embed: {type(error).__name__}: "
                                  f"{error}") from None

    @staticmethod
    def _tokenizer(folder: Path, window: int) -> Any:
        """The model's tokenizer, set to truncate at the window and pad to the longest in a batch."""
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:
            raise LocalModelError(f"cannot read the tokenizer {path}: {error}") from None
        padding = tokenizer.padding or {}
        pad_token = padding.get("pad_token") or _json(folder / "tokenizer_config.json").get("pad_token") or "[PAD]"
        pad_token = pad_token.get("content", "[PAD]") if isinstance(pad_token, dict) else str(pad_token)
        pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) or 0)
        tokenizer.enable_truncation(max_length=window)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        return tokenizer

    def _forward(self, texts: list[str]) -> np.ndarray:
        """Unit-length vectors for one batch, in its order."""
        if self.config.lowercase:
            texts = [t.lower() for t in texts]
        encodings = self._encoder.encode_batch([t.strip() for t in texts])
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64), "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        tokens = self._session.run(None, feed)[0]
        if tokens.ndim != 3:
            raise TransientError(f"the model returned shape {tokens.shape}, not one vector per token")
        if self.config.pooling is Pooling.CLS:
            pooled = tokens[:, 0]
        elif self.config.pooling is Pooling.MAX:
            pooled = np.where(mask[..., None] > 0, tokens, -1e9).max(axis=1)
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (tokens * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.clip(norms, 1e-12, None), dtype=np.float32)

    def embed(self, texts: list[str], on_headers: HeadersCallback | None = None) -> Reply:
        """Unit-length float32 vectors, ``vectors[i]`` for ``texts[i]``; ``on_headers`` is unused."""
        if not texts:
            return Reply([], 0)
        reject_blank_inputs(texts)
        counts = self.tokenizer.count_many(texts)
        order = sorted(range(len(texts)), key=lambda i: -counts[i])  # batches of like lengths: little padding
        vectors: list[np.ndarray] = [np.empty(0, np.float32)] * len(texts)
        try:
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for i, vector in zip(batch, self._forward([texts[i] for i in batch])):
                    vectors[i] = vector
        except MemoryError:
            raise TransientError(f"out of memory embedding {len(texts)} inputs") from None
        except Exception as error:  # onnxruntime raises its own classes, not exported by name
            if isinstance(error, (TransientError, RequestRejected)):
                raise
            raise TransientError(f"local model failed: {type(error).__name__}: {error}") from None
        if any(v.shape != (self.dimensions,) for v in vectors):
            raise TransientError(f"the model returned vectors of another size than {self.dimensions}")
        if not all(np.isfinite(v).all() for v in vectors):
            raise RequestRejected("model produced a vector with NaN or infinite values")
        window = self.tokenizer.window
        return Reply(vectors, sum(min(c, window) for c in counts))  # tokens the model actually read
