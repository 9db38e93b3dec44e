"""The OpenAI embeddings API (and any server that speaks it) behind the engine's provider contract.

The adapter owns three things the engine must not get wrong: pairing each vector with its input
by the reply's ``index`` (never by position), refusing replies that do not add up, and turning
the SDK's exceptions into the failure kinds of ``sections.engine.errors`` with messages that hold no secret.
"""
from __future__ import annotations

import base64
import os
import itertools
import threading
from typing import Any, Callable, Mapping

import numpy as np
import openai
from openai import DefaultHttpxClient

from sections.engine.errors import ProviderFatalError, RateLimited, RequestRejected, TransientError
from sections.engine.batching import Limits
from sections.providers.base import BuiltProvider, HeadersCallback, ProviderKind, ProviderOptions, Reply
from sections.engine.tokens import TiktokenTokenizer
from sections.redact import scrub

REQUEST_ID_HEADER = "x-sections-request"
DEFAULT_CONCURRENCY = 16  # requests in flight to an HTTP provider
API_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "no-key-required"  # what a keyless compatible server is sent: the SDK insists on a key


class HeaderTap:
    """Hands each response's headers to the callback registered for its request.

    Installed as an httpx response hook, so headers of successes *and* errors reach the rate
    limiter while the SDK keeps its ordinary ``client.embeddings.create`` interface.
    """

    def __init__(self) -> None:
        self._callbacks: dict[str, Callable[[Mapping[str, str]], None]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def register(self, callback: Callable[[Mapping[str, str]], None]) -> str:
        with self._lock:
            request_id = str(next(self._ids))
            self._callbacks[request_id] = callback
        return request_id

    def discard(self, request_id: str) -> None:
        with self._lock:
            self._callbacks.pop(request_id, None)

    def __call__(self, response: Any) -> None:
        request_id = response.request.headers.get(REQUEST_ID_HEADER)
        with self._lock:
            callback = self._callbacks.pop(request_id, None) if request_id else None
        if callback is not None:
            callback(response.headers)


def build(options: ProviderOptions) -> BuiltProvider:
    """The OpenAI API, or any compatible server at ``base_url`` (which may need no key).

    The SDK's own retries are off: the dispatcher owns retries, coordinated with the limiter. The
    header tap hands every response's rate-limit headers to the limiter, errors included.
    """
    api_key = options.api_key or os.environ.get(API_KEY_ENV)
    if not api_key:
        if options.base_url is None:
            raise ValueError(f"no OpenAI API key: pass api_key or set {API_KEY_ENV} "
                             "(or give base_url for a server that needs none)")
        api_key = NO_KEY
    tap = HeaderTap()
    client = options.client_factory(
        api_key=api_key,
        base_url=options.base_url,
        max_retries=0,
        timeout=options.timeout,
        http_client=DefaultHttpxClient(event_hooks={"response": [tap]}),
    )
    provider = OpenAIProvider(client, options.model, options.dimensions, tap, options.encoding_format)
    return BuiltProvider(ProviderKind.OPENAI, provider, options.model, TiktokenTokenizer(), Limits(),
                         DEFAULT_CONCURRENCY, client)


class OpenAIProvider:
    """One ``/embeddings`` call per ``embed``; thread-safe (the SDK client is)."""

    def __init__(self, client: Any, model: str, dimensions: int | None, tap: HeaderTap | None,
                 encoding_format: str = "base64"):
        self.client = client
        self.model = model
        self.dimensions = dimensions
        self._tap = tap
        self._encoding_format = encoding_format

    def embed(self, texts: list[str], on_headers: HeadersCallback | None = None) -> Reply:
        options: dict[str, Any] = {"encoding_format": self._encoding_format}
        if self.dimensions is not None:
            options["dimensions"] = self.dimensions
        request_id = self._tap.register(on_headers) if (self._tap and on_headers) else None
        if request_id is not None:
            options["extra_headers"] = {REQUEST_ID_HEADER: request_id}
        try:
            response = self.client.embeddings.create(model=self.model, input=texts, **options)
        except openai.APIError as error:
            raise classify(error) from None
        finally:
            if request_id is not None and self._tap is not None:
                self._tap.discard(request_id)
        try:
            return Reply(self._match(response, len(texts)), _billed(response))
        except (TypeError, AttributeError, ValueError) as error:
            raise TransientError(f"malformed reply: {scrub(str(error))}") from None

    def _match(self, response: Any, expected: int) -> list[np.ndarray]:
        return match_vectors([(item.index, item.embedding) for item in response.data or []], expected,
                             self.dimensions)


def match_vectors(data: list[tuple[Any, Any]], expected: int, dimensions: int | None) -> list[np.ndarray]:
    """A reply's ``(index, embedding)`` items as vectors by input position; raises TransientError
    unless every index from 0 to ``expected`` - 1 is there once, each with a finite vector of one size
    (``dimensions`` when asked for). The synchronous replies and the Batch API's result lines both
    pass here."""
    if len(data) != expected:
        raise TransientError(f"reply holds {len(data)} embeddings for {expected} inputs")
    slots: list[np.ndarray | None] = [None] * expected
    for index, embedding in data:
        if not isinstance(index, int) or not 0 <= index < expected or slots[index] is not None:
            raise TransientError(f"reply has a missing, repeated or out-of-range index {index!r}")
        vector = _decode(embedding)
        if vector.ndim != 1 or vector.size == 0:
            raise TransientError(f"reply item {index} is not a vector (shape {vector.shape})")
        slots[index] = vector
    vectors = [v for v in slots if v is not None]  # all of them: the count and indices were checked
    sizes = {v.shape[0] for v in vectors}
    if len(sizes) != 1 or (dimensions is not None and sizes != {dimensions}):
        raise TransientError(f"reply has vectors of sizes {sorted(sizes)}, expected {dimensions or 'one size'}")
    if not all(np.isfinite(v).all() for v in vectors):
        raise TransientError("reply has a vector with NaN or infinite values")
    return vectors


def _decode(embedding: Any) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32, copy=False)
    return np.asarray(embedding, dtype=np.float32)


def _billed(response: Any) -> int | None:
    tokens = getattr(getattr(response, "usage", None), "prompt_tokens", None)
    return tokens if isinstance(tokens, int) else None


def _server_message(error: openai.APIError) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return scrub(str(inner["message"]))
    return scrub(str(getattr(error, "message", None) or error))


def _code(error: openai.APIError) -> str | None:
    code = getattr(error, "code", None)
    if code:
        return str(code)
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("code") or inner.get("type")
    return None


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """``retry-after-ms`` (OpenAI's) first, then the standard ``retry-after`` in seconds."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def classify(error: openai.APIError) -> Exception:
    """The engine's failure kind for an SDK exception."""
    if isinstance(error, openai.APITimeoutError):
        return TransientError("request timed out")
    if isinstance(error, openai.APIConnectionError):
        return TransientError(f"connection failed: {scrub(str(error.__cause__ or error))}")
    status = getattr(error, "status_code", None)
    message = _server_message(error)
    if isinstance(error, openai.RateLimitError):
        if _code(error) == "insufficient_quota":
            return ProviderFatalError(f"quota exhausted (429 insufficient_quota): {message}")
        if "request too large" in message.lower():
            # Bigger than the whole token bucket: waiting never helps, smaller requests do.
            return RequestRejected(f"request too large for the rate limit (429): {message}")
        response = getattr(error, "response", None)
        return RateLimited(f"rate limited (429): {message}", retry_after_seconds(getattr(response, "headers", None)))
    if isinstance(error, openai.AuthenticationError):
        return ProviderFatalError("authentication failed (401): check the API key")
    if isinstance(error, openai.PermissionDeniedError):
        return ProviderFatalError(f"permission denied (403): {message}")
    if isinstance(error, openai.NotFoundError):
        return ProviderFatalError(f"not found (404): {message}")
    if status is not None and (status >= 500 or status in (408, 409)):
        return TransientError(f"server error ({status}): {message}")
    if status is not None and 400 <= status < 500:
        return RequestRejected(f"rejected ({status}): {message}")
    return TransientError(f"provider error: {message}")
