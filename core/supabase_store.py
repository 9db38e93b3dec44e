"""The seed's path to the store: ``from core.supabase_store import SupabaseStore``.

The store lives in the ``sections`` package (``sections.store``); this face keeps the seed's
module path working from a checkout, with the names it always offered.
"""
from sections.fingerprint import content_hash, section_text
from sections.postgres.index import index_name
from sections.store.supabase_store import LONG_INPUT_DEFAULT, SupabaseStore

__all__ = ["SupabaseStore", "section_text", "content_hash", "index_name", "LONG_INPUT_DEFAULT"]
