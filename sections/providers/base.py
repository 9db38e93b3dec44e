"""What the engine needs from a provider, and the kinds of provider there are.

The engine (``sections.engine.dispatch``) sends a list of texts and gets back one vector per text, matched
to its input (never by position in the wire format: each adapter owns that), plus the provider's
own token count when it gives one. Failures come back as the kinds in ``sections.engine.errors``, so the
engine decides retries, splits and stops the same way whoever answers.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np

from sections.engine.batching import Limits
from sections.engine.tokens import Tokenizer
from sections.engine.errors import RequestRejected

__all__ = ["BuiltProvider", "HeadersCallback", "Provider", "ProviderKind", "ProviderOptions", "Reply",
           "reject_blank_inputs"]

HeadersCallback = Callable[[Mapping[str, str]], None]


class ProviderKind(str, Enum):
    """Where vectors come from: a model in this process, or anything that speaks OpenAI's API."""

    LOCAL = "local"
    OPENAI = "openai"


@dataclass(frozen=True, slots=True)
class Reply:
    vectors: list[np.ndarray]  # vectors[i] belongs to input i of the request
    billed_tokens: int | None  # the provider's own count, when it gives one


class Provider(Protocol):
    """One request's worth of embedding; thread-safe, since many requests are in flight at once."""

    def embed(self, texts: list[str], on_headers: HeadersCallback | None = None) -> Reply:
        """Vectors for ``texts`` (``reply.vectors[i]`` for ``texts[i]``); raises a ``sections.engine.errors`` kind."""
        ...


@dataclass(frozen=True, slots=True)
class ProviderOptions:
    """Everything a caller may ask of a provider; each kind reads what applies to it.

    ``client_factory`` builds the OpenAI SDK client: the service passes its ``_sdk_client``, so
    ``patch('core.embedding_service.OpenAI')`` reaches the client (the seed's tests rely on it).
    """

    model: str
    client_factory: Callable[..., Any]
    api_key: str | None = None
    base_url: str | None = None
    dimensions: int | None = None
    timeout: float = 60.0
    encoding_format: str = "base64"


@dataclass(frozen=True, slots=True)
class BuiltProvider:
    """A provider and what comes with it: how to count its tokens, its limits, how many in flight."""

    kind: ProviderKind
    provider: Provider
    model: str  # the name vectors are stored under
    tokenizer: Tokenizer
    limits: Limits
    concurrency: int
    client: Any | None = None  # the SDK client, for callers that look at it (and to close it)


def reject_blank_inputs(texts: list[str]) -> None:
    """A model in this process would embed an empty input as a vector of nothing: refuse it as a
    server does (the engine splits the request and fails only that input)."""
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise RequestRejected(f"input {i} is empty or not a string")
