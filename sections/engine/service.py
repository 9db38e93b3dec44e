"""EmbeddingService: the seed's public API over the batch engine.

It keeps the user's names and return shapes and orchestrates the parts: ``engine.tokens`` counts,
``engine.batching`` packs, ``engine.dispatch`` runs requests in parallel under ``engine.ratelimit``,
and a provider adapter talks to the API. It owns no I/O details itself.

The SDK client is built by ``_sdk_client``, so the seed's face (``core/embedding_service.py``) can
build it from its own module's ``OpenAI``, the name the seed's tests patch.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, List, cast

from openai import OpenAI

from sections.batch.records import BatchLimits
from sections.engine.batching import Limits
from sections.engine.cache import VectorCache
from sections.engine.dispatch import STOP_GRACE_S, Dispatcher, RetryPolicy, started_pool
from sections.engine.errors import ProviderFatalError
from sections.providers import build_provider, choose_provider, resolve_kind, server_url
from sections.providers.base import ProviderKind, ProviderOptions
from sections.engine.ratelimit import RateLimiter
from sections.records import BatchEmbeddings, EmbeddingOutcome, EmbeddingSettings
from sections.redact import mask_url
from sections.engine.tokens import LongInputPolicy
from sections.engine.usage import Usage

if TYPE_CHECKING:
    from sections.batch.embedder import BatchEmbedder

__all__ = ["EmbeddingService", "EmbeddingOutcome", "ProviderFatalError", "choose_provider"]


def _validate_texts(texts: Any) -> None:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise ValueError("texts must be a list of strings")
    if not texts:
        raise ValueError("Cannot generate embeddings for empty list")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Text at index {i} is empty")


class EmbeddingService:
    """Embeds texts through the OpenAI embeddings API, any OpenAI-compatible server, or a local model.

    The provider follows from the model: a local model's name or folder (``all-MiniLM-L6-v2``,
    an ONNX or sentence-transformers folder) runs locally; anything else, or any ``base_url``, goes over HTTP;
    ``provider`` overrides.
    """

    MAX_BATCH_SIZE = 2048  # OpenAI's maximum inputs per request
    LEGACY_BATCH_SIZE = 100  # what the deprecated batch_generate used

    def __init__(
        self,
        api_key: str | None = None,
        model: str = "text-embedding-3-small",
        base_url: str | None = None,
        dimensions: int | None = None,
        *,
        provider: str | None = None,
        concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        long_input: str = "average",
        limits: Limits | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        cache_size: int = 10_000,
        encoding_format: str = "base64",
    ):
        policy = LongInputPolicy.parse(long_input)
        if dimensions is not None and dimensions < 1:
            raise ValueError("dimensions must be positive")
        base_url = server_url(base_url)
        kind = resolve_kind(model, base_url, provider)
        built = build_provider(kind, ProviderOptions(
            model=model, client_factory=self._sdk_client, api_key=api_key, base_url=base_url, dimensions=dimensions,
            timeout=timeout, encoding_format=encoding_format))
        self.long_input = policy
        self.base_url = base_url
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(rpm=rpm, tpm=tpm)
        self.client = built.client
        self.provider = built.provider
        self.model = built.model
        self.tokenizer = built.tokenizer
        self.limits = limits or built.limits
        concurrency = concurrency or built.concurrency
        self.provider_name: ProviderKind = kind
        self.dimensions = dimensions
        self.concurrency = concurrency
        self.usage = Usage(self.model)
        self._cache = VectorCache(cache_size)
        # Set it (from any thread, or a signal handler: setting is all it takes) and the runs in
        # progress stop between requests: nothing new is sent, replies in flight get
        # dispatch.STOP_GRACE_S to arrive, then the stream raises errors.Interrupted. Clear it to
        # use the service again. The command sets it on Ctrl-C and SIGTERM.
        self.stop_requested = threading.Event()
        self.stop_grace_s = STOP_GRACE_S  # how long replies in flight are awaited after a stop (watch: longer)
        self.hold_sending = threading.Event()  # set: nothing new is sent, replies in flight still arrive
        # One pool for the service's lifetime, its threads started now: starting threads per call
        # costs more than small jobs take, and inside a call they would hold back its first requests.
        self._pool = started_pool(concurrency)

    def close(self) -> None:
        """Stop the worker threads and the HTTP client (the service cannot be used after)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()

    def _sdk_client(self, **settings: Any) -> Any:
        """The OpenAI SDK client the provider sends through (a face may build it otherwise)."""
        return OpenAI(**settings)

    def batch_api(self, limits: BatchLimits | None = None) -> BatchEmbedder:
        """This service's Batch API side (OpenAI and compatible servers only): files planned as this
        service plans requests, so a batch stores the vectors the synchronous path would."""
        from sections.batch.embedder import BatchEmbedder
        from sections.providers.openai_batch import BatchClient

        if self.provider_name is not ProviderKind.OPENAI or self.client is None:
            raise ValueError(f"the Batch API needs an OpenAI-compatible provider, not {self.provider_name.value} "
                             f"({self.model}): give an OpenAI model or --base-url")
        return BatchEmbedder(BatchClient(self.client, self.dimensions), self.tokenizer, self.limits,
                             limits or BatchLimits(), self.settings, mask_url(str(self.client.base_url).rstrip("/")))

    def __enter__(self) -> "EmbeddingService":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- accounting ---------------------------------------------------------------------------------

    @property
    def settings(self) -> EmbeddingSettings:
        """What decides this service's vectors besides the text (stored and fingerprinted with them)."""
        return EmbeddingSettings(self.model, self.dimensions, self.long_input)

    @property
    def total_tokens(self) -> int:
        """Tokens billed by the provider since this service was created."""
        return self.usage.tokens

    @property
    def total_cost_usd(self) -> float:
        return self.usage.cost_usd

    def get_usage(self) -> dict[str, Any]:
        return {**self.usage.as_dict(), "cache_hits": self._cache.hits, "cache_size": len(self._cache)}

    def clear_cache(self) -> None:
        self._cache.clear()

    def _cache_key(self, text: str) -> tuple[str, int | None, str, str]:
        return (self.model, self.dimensions, self.long_input.value, text)

    # -- the streaming primitive --------------------------------------------------------------------

    def stream_embeddings(
        self,
        items: Iterable[tuple[Hashable, str]],
        *,
        max_batch_size: int | None = None,
        window_texts: int = 4096,
        count_items: bool = True,
    ) -> Iterator[EmbeddingOutcome]:
        """Yield an ``EmbeddingOutcome`` per (key, text) as requests complete, in any order.

        Memory is bounded by the window and the requests in flight, so a million texts never sit
        in memory as Python floats. On quota/auth failures, what is in flight is yielded and then
        ``ProviderFatalError`` is raised; on ``stop_requested``, what arrives within
        ``STOP_GRACE_S`` is yielded and then ``Interrupted`` is raised; items never answered get
        no outcome. Each outcome carries its item's token count, unless ``count_items`` is False
        (then None, wherever nothing else needed the count): counting is the costliest CPU work
        of a run, and the bill (``total_tokens``) never depends on it.
        """
        if max_batch_size is not None and not 1 <= max_batch_size <= self.MAX_BATCH_SIZE:
            raise ValueError(f"max_batch_size must be between 1 and {self.MAX_BATCH_SIZE}")
        dispatcher = Dispatcher(
            self.provider,
            self.tokenizer,
            self.limits,
            long_input=self.long_input,
            concurrency=self.concurrency,
            limiter=self.limiter,
            retry=self.retry,
            usage=self.usage,
            pool=self._pool,
            window_texts=max(1, window_texts),
            stop=self.stop_requested,
            stop_grace_s=self.stop_grace_s,
            count_items=count_items,
            hold=self.hold_sending,
        )
        return dispatcher.run(items, max_inputs=max_batch_size)

    # -- the seed's API -----------------------------------------------------------------------------

    def batch_generate_embeddings(self, texts: List[str], max_batch_size: int = MAX_BATCH_SIZE) -> BatchEmbeddings:
        """Embed many texts in large parallel requests; partial results on failure.

        Returns ``embeddings`` (the successful vectors, in input order), ``indices`` (the input
        position of each), ``failed_indices`` (sorted), ``errors`` ({position: reason}) and
        ``total_tokens`` (billed during this call). Requests respect every provider limit (inputs,
        tokens per request, tokens per input); identical texts are sent once; vectors are paired
        with inputs by the reply's ``index``. Raises ValueError for an empty list or an empty text,
        RuntimeError when nothing succeeded.
        """
        _validate_texts(texts)
        # Lists of floats, as the API has always returned. Each vector is converted as its request
        # completes, while later replies are still on the way: converting 1,000 x 1,536 floats at
        # the end took ~0.05 s, a tenth of the whole call.
        vectors: list[list[float] | None] = [None] * len(texts)
        errors: dict[int, str] = {}
        todo = []
        for i, text in enumerate(texts):
            cached = self._cache.get(self._cache_key(text))
            if cached is None:
                todo.append((i, text))
            else:
                vectors[i] = cached.tolist()
        tokens_before = self.usage.tokens
        fatal: ProviderFatalError | None = None
        try:
            # No per-item counts: this API returns none, and its total is the bill.
            for outcome in self.stream_embeddings(todo, max_batch_size=max_batch_size, window_texts=max(1, len(todo)),
                                                  count_items=False):
                position = cast(int, outcome.key)  # the keys given above are input positions
                if outcome.vector is None:
                    errors[position] = outcome.error or "failed"
                else:
                    vectors[position] = outcome.vector.tolist()
                    self._cache.put(self._cache_key(texts[position]), outcome.vector)
        except ProviderFatalError as error:
            fatal = error
        for i, vector in enumerate(vectors):
            if vector is None and i not in errors:
                errors[i] = f"not embedded: {fatal}"
        indices = [i for i, vector in enumerate(vectors) if vector is not None]
        if not indices:
            reason = fatal or next(iter(errors.values()))
            raise RuntimeError(f"Failed to generate any embeddings: {reason}") from fatal
        return BatchEmbeddings(
            embeddings=[vector for vector in vectors if vector is not None],
            failed_indices=sorted(errors),
            total_tokens=self.usage.tokens - tokens_before,
            indices=indices,
            errors=dict(sorted(errors.items())),
        )

    def batch_generate(self, texts: List[str], max_batch_size: int = LEGACY_BATCH_SIZE) -> List[List[float]]:
        """Generate embeddings in batch; one vector per text, in order.

        .. deprecated::
            Use ``batch_generate_embeddings()`` instead: it reports partial results instead of
            raising, and defaults to 2048 inputs per request where this method defaults to 100.

        Raises ValueError for an empty list or an empty text, RuntimeError if any text fails.
        """
        warnings.warn(
            "batch_generate() is deprecated; use batch_generate_embeddings()", DeprecationWarning, stacklevel=2
        )
        result = self.batch_generate_embeddings(texts, max_batch_size=max_batch_size)
        if result["failed_indices"]:
            first = result["failed_indices"][0]
            raise RuntimeError(
                f"{len(result['failed_indices'])} of {len(texts)} embeddings failed; "
                f"first at index {first}: {result['errors'][first]}"
            )
        return result["embeddings"]

    def generate_embedding(self, text: str) -> List[float]:
        """Embed one text (always asks the provider; the result is cached)."""
        _validate_texts([text])
        outcomes = list(self.stream_embeddings([(0, text)]))
        if not outcomes:
            raise RuntimeError("embedding failed: no reply")
        outcome = outcomes[0]
        if outcome.vector is None:
            raise RuntimeError(f"embedding failed: {outcome.error}")
        self._cache.put(self._cache_key(text), outcome.vector)
        vector: list[float] = outcome.vector.tolist()
        return vector

    def get_or_generate_embedding(self, text: str) -> List[float]:
        """The cached vector for ``text`` if there is one, else ``generate_embedding(text)``."""
        _validate_texts([text])
        cached = self._cache.get(self._cache_key(text))
        return cached.tolist() if cached is not None else self.generate_embedding(text)
