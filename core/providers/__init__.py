"""Building a provider from its kind: one table, so a new kind is one entry, not another branch.

``choose_provider`` says which kind a model name means; ``build_provider`` builds it. Each kind's
module is imported only when that kind is built (the local one pulls in torch on first load).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

from core.providers.base import BuiltProvider, ProviderKind, ProviderOptions

__all__ = ["BUILDERS", "build_provider", "choose_provider", "parse_kind"]

# kind -> the module whose ``build(options)`` makes it
BUILDERS: dict[ProviderKind, str] = {
    ProviderKind.LOCAL: "core.providers.local",
    ProviderKind.OPENAI: "core.providers.openai",
}


def choose_provider(model: str, base_url: str | None = None) -> ProviderKind:
    """``local`` for a sentence-transformers model name or folder, else ``openai`` (any compatible server).

    A ``base_url`` always means an OpenAI-compatible server, whatever the model is called there.
    """
    if base_url is None:
        from core.providers.local import is_local_model

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
