"""sections: embed many document sections in large, fast, safe batches and keep them in Postgres/pgvector.

The names a library user needs, importable from the top::

    from sections import EmbeddingService, SupabaseStore, Section, SearchFilter

Each is imported on first use (PEP 562), so ``import sections`` costs nothing and a command that
never embeds never loads the OpenAI SDK or psycopg. The folders are the stages (see
ARCHITECTURE.md): ``engine``, ``providers``, ``batch``, ``reading``, ``pipeline``, ``postgres``,
``store``, ``cli``, ``simulator``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sections.batch.records import BatchLimits, BatchSummary
    from sections.engine.errors import Interrupted, ProviderError, ProviderFatalError
    from sections.engine.service import EmbeddingService
    from sections.pipeline.batch import BatchOptions
    from sections.pipeline.watch import WatchOptions
    from sections.records import (DEFAULT_COLLECTION, IngestSummary, SearchFilter, Section, Selection)
    from sections.store.supabase_store import SupabaseStore

__all__ = ["BatchLimits", "BatchOptions", "BatchSummary", "DEFAULT_COLLECTION", "EmbeddingService", "IngestSummary",
           "Interrupted", "ProviderError", "ProviderFatalError", "SearchFilter", "Section", "Selection",
           "SupabaseStore", "WatchOptions"]

# public name -> the module that defines it
_HOMES = {
    "EmbeddingService": "sections.engine.service",
    "SupabaseStore": "sections.store.supabase_store",
    "Section": "sections.records", "SearchFilter": "sections.records", "Selection": "sections.records",
    "IngestSummary": "sections.records", "DEFAULT_COLLECTION": "sections.records",
    "ProviderError": "sections.engine.errors", "ProviderFatalError": "sections.engine.errors",
    "Interrupted": "sections.engine.errors",
    "BatchLimits": "sections.batch.records", "BatchSummary": "sections.batch.records",
    "BatchOptions": "sections.pipeline.batch", "WatchOptions": "sections.pipeline.watch",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sections' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once, then a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
