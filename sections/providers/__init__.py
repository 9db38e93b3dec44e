"""Building a provider from its kind: one table, so a new kind is one entry, not another branch.

``resolve_kind`` says which kind a model name means, or refuses a name nobody serves;
``build_provider`` builds it. Each kind's module is imported only when that kind is built (the
local one pulls in onnxruntime or torch on first load, the OpenAI one the SDK), so deciding costs nothing and the
command can check a name before it opens a database or loads a model.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from sections.providers.base import BuiltProvider, ProviderKind, ProviderOptions
from sections.engine.usage import PRICE_PER_MILLION_TOKENS

__all__ = ["BASE_URL_ENV", "BUILDERS", "OPENAI_MODELS", "build_provider", "choose_provider", "parse_kind",
           "resolve_kind", "server_url"]

BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_MODELS = tuple(PRICE_PER_MILLION_TOKENS)  # the embedding models OpenAI serves

# kind -> the module whose ``build(options)`` makes it
BUILDERS: dict[ProviderKind, str] = {
    ProviderKind.LOCAL: "sections.providers.local",
    ProviderKind.OPENAI: "sections.providers.openai",
}


def choose_provider(model: str, base_url: str | None = None) -> ProviderKind:
    """``local`` for a local model's name or folder (ONNX or sentence-transformers), else ``openai`` (any compatible server).

    A ``base_url`` always means an OpenAI-compatible server, whatever the model is called there.
    """
    if base_url is None:
        from sections.providers.local import is_local_model

        if is_local_model(model):
            return ProviderKind.LOCAL
    return ProviderKind.OPENAI


def parse_kind(name: str | ProviderKind) -> ProviderKind:
    """The kind a user named; a clear error lists the kinds there are."""
    try:
        return ProviderKind(name)
    except ValueError:
        choices = ", ".join(repr(kind.value) for kind in ProviderKind)
        raise ValueError(f"unknown provider {name!r}; choose {choices}") from None


def build_provider(kind: ProviderKind, options: ProviderOptions) -> BuiltProvider:
    build: Callable[[ProviderOptions], BuiltProvider] = importlib.import_module(BUILDERS[kind]).build
    return build(options)


def server_url(base_url: str | None) -> str | None:
    """The OpenAI-compatible server asked for: ``base_url``, else ``$OPENAI_BASE_URL``, else None."""
    return base_url or os.environ.get(BASE_URL_ENV) or None


def resolve_kind(model: str, base_url: str | None = None, provider: str | ProviderKind | None = None) -> ProviderKind:
    """The kind that serves ``model`` (``base_url`` as resolved by ``server_url``), decided without
    loading or sending anything; ValueError for a name that no kind would serve.

    A typo'd name must not be sent to OpenAI (and billed there, or reported as a missing key): an
    OpenAI name outside OpenAI's list needs ``provider`` or a ``base_url``.
    """
    kind = parse_kind(provider) if provider else choose_provider(model, base_url)
    if provider is None and base_url is None and kind is ProviderKind.OPENAI and model not in OPENAI_MODELS:
        raise ValueError(f"unknown model {model!r}: use {', '.join(OPENAI_MODELS)} (OpenAI, needs OPENAI_API_KEY), "
                         "all-MiniLM-L6-v2 or a folder holding an ONNX or sentence-transformers model (local), or give "
                         "--provider openai / --base-url for a model another OpenAI-compatible server knows")
    return kind
