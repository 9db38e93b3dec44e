"""Splitting sections longer than the model's window into chunks that each get a vector.

One vector averaged over hundreds of model windows retrieves almost nothing: a long section is
better stored as chunks that each fit the window, so each vector means one passage. Chunks are cut
on paragraph boundaries first, then sentences, and only a sentence longer than a whole chunk is
cut mid-text (at a token boundary); a fenced code block is one paragraph, so a fence is never
split unless it alone is longer than a chunk. Each chunk repeats the last ``overlap`` tokens' worth
of whole sentences or paragraphs of the one before, so a passage cut at a boundary is still found.

A chunk is a ``Section`` of its own: its id is the parent's id + ``~`` + its position from 1
(stable while the parent's id is), its title is the parent's (the title is embedded with every
chunk), and its metadata names the parent, the parent's title, its position and the count. A
section that fits is passed on unchanged, under its own id.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from sections.fingerprint import section_text
from sections.records import Section
from sections.engine.tokens import Tokenizer

__all__ = ["CHUNK_MARK", "MIN_WORDS", "ChunkPolicy", "chunk_section", "chunk_sections", "default_overlap", "fold_small"]

CHUNK_MARK = "~"
MIN_CHUNK_TOKENS = 16
MAX_DEFAULT_OVERLAP = 64
MIN_WORDS = 5  # a document section with fewer words is folded into a neighbour (fold_small)
_WORDS = re.compile(r"[^\W_]+")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    """Chunks of at most ``max_tokens`` (title included), each repeating up to ``overlap`` tokens."""

    max_tokens: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < MIN_CHUNK_TOKENS:
            raise ValueError(f"--chunk-tokens must be at least {MIN_CHUNK_TOKENS}, not {self.max_tokens}")
        if not 0 <= self.overlap <= self.max_tokens // 2:
            raise ValueError(f"--chunk-overlap must be between 0 and half of --chunk-tokens "
                             f"({self.max_tokens // 2}), not {self.overlap}")

    @classmethod
    def for_model(cls, window: int, chunk_tokens: int | None = None, overlap: int | None = None) -> ChunkPolicy:
        """What ``sections ingest`` uses: chunks of the model's window unless the user set a size,
        and ``default_overlap`` unless the user set one."""
        size = window if chunk_tokens is None else chunk_tokens
        return cls(size, default_overlap(size) if overlap is None else overlap)

    @staticmethod
    def check_options(chunk_tokens: int | None, overlap: int | None) -> None:
        """Refuse bad ``--chunk-tokens``/``--chunk-overlap`` before anything loads (the model's
        window is known only once it has loaded, seconds later). Without ``--chunk-tokens`` the
        chunks are the model's window, so an overlap above the default's cap (64) needs the size
        said too (an overlap of 500 is more than half of MiniLM's window); the check against the
        window itself still runs once the model is loaded."""
        if chunk_tokens is not None:
            ChunkPolicy(chunk_tokens, default_overlap(chunk_tokens) if overlap is None else overlap)
        elif overlap is not None and not 0 <= overlap <= MAX_DEFAULT_OVERLAP:
            raise ValueError(f"--chunk-overlap must be between 0 and {MAX_DEFAULT_OVERLAP} unless --chunk-tokens "
                             f"sets the chunk size too (at most half of it), not {overlap}")


def default_overlap(max_tokens: int) -> int:
    """An eighth of a chunk, at most 64 tokens: enough to carry a sentence across a cut."""
    return min(MAX_DEFAULT_OVERLAP, max_tokens // 8)


class _Piece(NamedTuple):
    text: str
    tokens: int
    joiner: str  # what goes between this piece and the one before it in the same chunk
    code: bool = False  # holds a fenced block (whole, or some of its lines fenced again): never cut


def chunk_sections(sections: Iterable[Section], tokenizer: Tokenizer, policy: ChunkPolicy, *,
                   every_section: bool = False) -> Iterator[Section]:
    """Chunk the sections read from documents (``Section.from_document``), or all with ``every_section``.

    Records given with explicit ids (JSONL/JSON/CSV) keep their ids and the long-input policy
    unless the user asked for chunks (``every_section``).
    """
    for section in fold_small(sections):
        if section.from_document or every_section:
            yield from chunk_section(section, tokenizer, policy)
        else:
            yield section


def fold_small(sections: Iterable[Section]) -> Iterator[Section]:
    """Sections read from documents, with those of fewer than ``MIN_WORDS`` words (a lone import
    line, ``**Type:** string``) folded into a neighbour of the same file instead of stored alone,
    where their vector means little and crowds results. The rule: each goes, under its own heading,
    to the end of the section before it (its parent or the sibling above); one that comes first in
    its file goes to the start of the first section after it that is big enough. A file of small
    sections only is one section. Records (JSONL/JSON/CSV) pass as they are."""
    document: list[Section] = []
    for section in sections:
        if document and (not section.from_document or _file(section) != _file(document[-1])):
            yield from _folded(document)
            document = []
        if section.from_document:
            document.append(section)
        else:
            yield section
    yield from _folded(document)


def _file(section: Section) -> tuple[object, object]:
    metadata = section.metadata if isinstance(section.metadata, dict) else {}
    return section.source, metadata.get("source")


def _folded(document: list[Section]) -> list[Section]:
    kept: list[Section] = []
    waiting: list[Section] = []  # small ones at the start of the file, for the first big one
    for section in document:
        if len(_WORDS.findall(section.content)) >= MIN_WORDS:
            kept.append(_joined(section, waiting, before=True) if waiting else section)
            waiting = []
        elif kept:
            kept[-1] = _joined(kept[-1], [section], before=False)
        else:
            waiting.append(section)
    if waiting:
        kept.append(_joined(waiting[0], waiting[1:], before=False))
    return kept


def _joined(section: Section, small: list[Section], *, before: bool) -> Section:
    """``section`` with the small sections' texts, each under its own heading, before or after its own."""
    texts = [f"{_heading(item)}\n{item.content}" if _heading(item) else item.content for item in small]
    return replace(section, content="\n\n".join([*texts, section.content] if before else [section.content, *texts]))


def _heading(section: Section) -> str:
    """The section's own heading (the last of its breadcrumb title); "" for a file's opening text."""
    metadata = section.metadata if isinstance(section.metadata, dict) else {}
    headings = metadata.get("headings")
    return str(headings[-1]) if isinstance(headings, list) and headings else ""


def chunk_section(section: Section, tokenizer: Tokenizer, policy: ChunkPolicy) -> list[Section]:
    """The section itself if it fits ``policy.max_tokens``, else its chunks in order."""
    if _fits(tokenizer, section_text(section.title, section.content), policy.max_tokens):
        return [section]
    heading = tokenizer.count(section_text(section.title, "x")) - tokenizer.count("x") if section.title else 0
    budget = max(MIN_CHUNK_TOKENS // 2, policy.max_tokens - heading)
    texts = _pack(_pieces(section.content, tokenizer, budget), budget, policy.overlap, tokenizer)
    parent: dict[str, Any] = dict(section.metadata) if isinstance(section.metadata, dict) else {}
    return [
        replace(section, id=f"{section.id}{CHUNK_MARK}{number}", content=text,
                metadata={**parent, "parent": section.id, "parent_title": section.title,
                          "chunk": number, "chunks": len(texts)})
        for number, text in enumerate(texts, 1)
    ]


def _fits(tokenizer: Tokenizer, text: str, limit: int) -> bool:
    bound = tokenizer.bound(text)
    return (bound is not None and bound <= limit) or tokenizer.count(text) <= limit


def _paragraphs(content: str) -> Iterator[str]:
    """Paragraphs split at blank lines, with each fenced code block kept whole."""
    current: list[str] = []
    for block, fenced in _blocks(content.split("\n")):
        if fenced:
            current.extend(block)
            continue
        for line in block:
            if line.strip():
                current.append(line)
            elif current:
                yield "\n".join(current)
                current = []
    if current:
        yield "\n".join(current)


def _blocks(lines: list[str]) -> Iterator[tuple[list[str], bool]]:
    """Runs of lines outside fences, and fenced blocks (fences included), in order."""
    run: list[str] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            run.append(lines[index])
            index += 1
            continue
        if run:
            yield run, False
            run = []
        end = index + 1
        while end < len(lines) and not _closes(lines[end], opening[1]):
            end += 1
        yield lines[index:end + 1], True
        index = end + 1
    if run:
        yield run, False


def _closes(line: str, fence: str) -> bool:
    found = _FENCE.match(line)
    return found is not None and found[1][0] == fence[0] and len(found[1]) >= len(fence) \
        and not line[found.end():].strip()


def _pieces(content: str, tokenizer: Tokenizer, budget: int) -> Iterator[_Piece]:
    """Paragraphs that fit; sentences of those that do not, and their fenced blocks in runs of lines
    fenced again; token cuts of sentences that still do not fit."""
    for paragraph in _paragraphs(content):
        count = tokenizer.count(paragraph)
        if count <= budget:
            yield _Piece(paragraph, count, "\n\n", code=any(_FENCE.match(line) for line in paragraph.split("\n")))
            continue
        joiner = "\n\n"
        for block, fenced in _blocks(paragraph.split("\n")):
            if fenced:
                yield from _fenced_pieces(block, tokenizer, budget, joiner)
            else:
                yield from _sentences("\n".join(block), tokenizer, budget, joiner)
            joiner = "\n"


def _sentences(text: str, tokenizer: Tokenizer, budget: int, joiner: str) -> Iterator[_Piece]:
    for sentence in _SENTENCE_END.split(text):
        if not sentence.strip():
            continue
        count = tokenizer.count(sentence)
        if count <= budget:
            yield _Piece(sentence, count, joiner)
        else:
            for index, (cut, tokens) in enumerate(tokenizer.split(sentence, budget)):
                yield _Piece(cut, tokens, joiner if index == 0 else "")
        joiner = " "


def _fenced_pieces(block: list[str], tokenizer: Tokenizer, budget: int, joiner: str) -> Iterator[_Piece]:
    """A fenced block as one piece if it fits, else runs of its lines each fenced again with the
    opening line (its info string: the language) and the closing fence, so no chunk holds code
    without its fence; a line longer than a whole chunk is cut at token boundaries, each cut fenced."""
    text = "\n".join(block)
    count = tokenizer.count(text)
    if count <= budget:
        yield _Piece(text, count, joiner, code=True)
        return
    opening = block[0]
    marker = _FENCE.match(opening)
    closed = len(block) > 1 and marker is not None and _closes(block[-1], marker[1])
    closing = block[-1] if closed else opening[:len(opening) - len(opening.lstrip())] + (marker[1] if marker else "```")
    body = block[1:-1] if closed else block[1:]
    room = max(MIN_CHUNK_TOKENS // 2, budget - tokenizer.count(f"{opening}\n\n{closing}"))
    run: list[str] = []
    used = 0

    def fenced(lines: list[str]) -> _Piece:
        wrapped = "\n".join([opening, *lines, closing])
        return _Piece(wrapped, tokenizer.count(wrapped), joiner, code=True)

    for line in body:
        tokens = tokenizer.count(line) + 1
        if run and used + tokens > room:
            yield fenced(run)
            joiner, run, used = "\n\n", [], 0
        if tokens > room:
            for cut, _ in tokenizer.split(line, room):
                yield fenced([cut])
                joiner = "\n\n"
            continue
        run.append(line)
        used += tokens
    if run:
        yield fenced(run)


def _pack(pieces: Iterable[_Piece], budget: int, overlap: int, tokenizer: Tokenizer) -> list[str]:
    """Greedy: add pieces while the chunk fits; each new chunk starts with the last pieces of the
    previous one that fit in ``overlap`` tokens. Fitting is decided by a real count of the joined
    text, since its tokens can differ from the sum of its pieces'."""
    chunks: list[str] = []
    current: list[_Piece] = []
    carried = 0  # pieces at the start of ``current`` repeated from the chunk before

    def fits(candidate: list[_Piece]) -> bool:
        if sum(p.tokens + 1 for p in candidate) - 1 > budget:  # the cheap test first
            return False
        return tokenizer.count(_join(candidate)) <= budget

    for piece in pieces:
        if current and not fits(current + [piece]):
            chunks.append(_join(current))
            current = _tail(current, overlap, tokenizer)
            carried = len(current)
            if current and not fits(current + [piece]):  # no room beside the overlap: drop it
                current, carried = [], 0
        current.append(piece)
    if len(current) > carried:  # a last chunk of nothing but repeated text adds nothing
        chunks.append(_join(current))
    return chunks


def _tail(pieces: list[_Piece], overlap: int, tokenizer: Tokenizer) -> list[_Piece]:
    """The end of a chunk, at most ``overlap`` tokens, to repeat at the start of the next: whole
    pieces, then the last sentences of the piece that does not fit whole (never the whole chunk)."""
    tail: list[_Piece] = []
    room = overlap
    for piece in reversed(pieces[1:] if len(pieces) > 1 else pieces):
        if piece.tokens + 1 <= room and (tail or len(pieces) > 1):
            tail.insert(0, piece)
            room -= piece.tokens + 1
            continue
        if piece.code:  # code is carried whole or not at all: a chunk never starts inside a fence
            break
        sentences = [text for text in _SENTENCE_END.split(piece.text) if text.strip()]
        kept: list[str] = []
        for sentence in reversed(sentences[1:]):
            tokens = tokenizer.count(sentence) + 1
            if tokens > room:
                break
            kept.insert(0, sentence)
            room -= tokens
        if kept:
            text = " ".join(kept)
            tail.insert(0, _Piece(text, tokenizer.count(text), piece.joiner))
        break
    return tail


def _join(pieces: list[_Piece]) -> str:
    return "".join((piece.joiner if index else "") + piece.text for index, piece in enumerate(pieces))
