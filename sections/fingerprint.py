"""What gets embedded for a section, its fingerprint, and the one rule for "already stored".

The fingerprint (``content_hash``) changes whenever anything that decides the section's vector
changes: its text, the model, the requested dimensions, the long-input policy. It is stored beside
the vector, so a rerun skips what is current; the database computes the same value in SQL
(``sections_content_hash`` in ``sections/postgres/schema/001_init.sql``), so ``status`` and ``sync``
find stale vectors without reading the corpus out. ``split_current`` is the one place ingest,
sync and the dry run decide what is due.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from sections.records import EmbeddingSettings, Section

__all__ = ["Due", "Split", "content_hash", "fingerprint", "section_text", "split_current"]

_HASH_DOMAIN = b"sections.content_hash.v1"
EMPTY_CONTENT = "empty content"


def section_text(title: str | None, content: str | None) -> str:
    """The text embedded for a section: ``f"{title}\\n\\n{content}"``, or ``content`` if the title is empty."""
    title = title or ""
    content = content or ""
    return f"{title}\n\n{content}" if title else content


def content_hash(
    title: str | None,
    content: str | None,
    model: str,
    dimensions: int | None,
    long_input_policy: str | None,
) -> bytes:
    """16 bytes that change whenever anything that determines the section's vector changes.

    sha256 over NUL-separated UTF-8 fields (a domain tag, model, requested dimensions or "",
    long-input policy, the embedded text), truncated to 16 bytes. sha256 and not blake2b because
    Postgres has sha256 built in (see the module doc). Fields cannot contain NUL (Postgres text
    cannot hold it; such sections are rejected before they get here).
    """
    digest = hashlib.sha256()
    digest.update(_HASH_DOMAIN + b"\x00")
    digest.update((model or "").encode("utf-8") + b"\x00")
    digest.update(("" if dimensions is None else str(int(dimensions))).encode("ascii") + b"\x00")
    digest.update((long_input_policy or "").encode("utf-8") + b"\x00")
    digest.update(section_text(title, content).encode("utf-8"))
    return digest.digest()[:16]


def fingerprint(section: Section, settings: EmbeddingSettings) -> bytes:
    """``content_hash`` of a section under a run's settings."""
    return content_hash(section.title, section.content, settings.model, settings.dimensions, settings.long_input_name)


class Due(NamedTuple):
    """A section to embed, and the fingerprint its vector will be stored with."""

    section: Section
    digest: bytes

    @property
    def text(self) -> str:
        return section_text(self.section.title, self.section.content)


@dataclass(slots=True)
class Split:
    """One batch of sections sorted by what a run must do with each."""

    due: list[Due] = field(default_factory=list)  # to embed
    unchanged: int = 0  # stored with this very fingerprint: nothing to do
    blank: list[Section] = field(default_factory=list)  # no content: a failure, never sent


def split_current(sections: Iterable[Section], settings: EmbeddingSettings,
                  stored: Mapping[str, bytes]) -> Split:
    """Sort ``sections`` into due, unchanged and blank, given the fingerprints ``stored`` for them."""
    split = Split()
    for section in sections:
        if not section.content.strip():
            split.blank.append(section)
            continue
        digest = fingerprint(section, settings)
        if stored.get(section.id) == digest:
            split.unchanged += 1
        else:
            split.due.append(Due(section, digest))
    return split
