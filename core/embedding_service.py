"""The seed's path to the embedding service: ``from core.embedding_service import EmbeddingService``.

The service lives in the ``sections`` package (``sections.engine.service``); this face keeps the
seed's module path working from a checkout. It builds the SDK client from this module's ``OpenAI``,
looked up at call time, so ``unittest.mock.patch('core.embedding_service.OpenAI')`` replaces it
(the seed's tests do).
"""
from __future__ import annotations

from typing import Any

from openai import OpenAI

from sections.engine import service
from sections.engine.errors import ProviderFatalError
from sections.providers import choose_provider
from sections.records import EmbeddingOutcome

__all__ = ["EmbeddingService", "EmbeddingOutcome", "OpenAI", "ProviderFatalError", "choose_provider"]


class EmbeddingService(service.EmbeddingService):
    __doc__ = service.EmbeddingService.__doc__

    def _sdk_client(self, **settings: Any) -> Any:
        return OpenAI(**settings)
