"""sections.reading.chunking: long sections become chunks that fit the window, cut where the text allows."""
from __future__ import annotations

import re

import pytest

from sections.reading.chunking import CHUNK_MARK, ChunkPolicy, chunk_section, chunk_sections, default_overlap
from sections.fingerprint import section_text
from sections.records import Section
from sections.engine.tokens import TiktokenTokenizer

TOKENIZER = TiktokenTokenizer()


def _tokens(section: Section) -> int:
    return TOKENIZER.count(section_text(section.title, section.content))


def _long_text(paragraphs: int = 20, sentences: int = 8) -> str:
    return "\n\n".join(" ".join(f"Paragraph {p} sentence {s} explains topic {p} at length." for s in range(sentences))
                       for p in range(paragraphs))


def test_a_section_that_fits_passes_unchanged():
    section = Section("doc.md#a", "Title", "short text", {"source": "doc.md"}, from_document=True)
    assert chunk_section(section, TOKENIZER, ChunkPolicy(100)) == [section]
    assert chunk_section(section, TOKENIZER, ChunkPolicy(100))[0].metadata == {"source": "doc.md"}


def test_chunks_fit_the_window_title_included_and_name_their_parent():
    section = Section("doc.md#a", "A fairly long title for this section", _long_text(), {"source": "doc.md"})
    chunks = chunk_section(section, TOKENIZER, ChunkPolicy(120, 20))
    assert len(chunks) > 5
    assert all(_tokens(chunk) <= 120 for chunk in chunks)
    assert [chunk.id for chunk in chunks] == [f"doc.md#a{CHUNK_MARK}{n}" for n in range(1, len(chunks) + 1)]
    assert all(chunk.title == section.title for chunk in chunks)
    assert chunks[2].metadata == {"source": "doc.md", "parent": "doc.md#a", "parent_title": section.title,
                                  "chunk": 3, "chunks": len(chunks)}


def test_nothing_is_lost_and_sentences_are_never_cut_when_they_fit():
    section = Section("d", "", _long_text(12, 6))
    chunks = chunk_section(section, TOKENIZER, ChunkPolicy(64, 0))
    sentences = re.findall(r"Paragraph \d+ sentence \d+ explains topic \d+ at length\.", section.content)
    for sentence in sentences:
        assert sum(sentence in chunk.content for chunk in chunks) == 1, sentence  # no overlap: exactly once
    assert all(chunk.content.endswith(".") for chunk in chunks)


def test_paragraphs_that_fit_are_kept_whole():
    paragraphs = [" ".join(f"Word{p}x{w}." for w in range(10)) for p in range(12)]
    chunks = chunk_section(Section("d", "", "\n\n".join(paragraphs)), TOKENIZER, ChunkPolicy(120, 0))
    for paragraph in paragraphs:
        assert any(paragraph in chunk.content for chunk in chunks)
    assert all(chunk.content.count("\n\n") + 1 == sum(p in chunk.content for p in paragraphs) for chunk in chunks)


FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)


@pytest.mark.parametrize("overlap", [0, 30])
def test_no_chunk_starts_or_ends_inside_a_fence_without_it(overlap):
    code = "\n".join(f'    print("step {n} of the long example", {n})  # "Let us know."' for n in range(120))
    content = (f"Run this:\n```python title=\"example.py\"\n{code}\n```\nThen this.\n\n" + _long_text(3, 4)
               + "\n\n~~~\n" + "x" * 3000 + "\n~~~")
    chunks = chunk_section(Section("d", "Code", content), TOKENIZER, ChunkPolicy(128, overlap))
    assert len(chunks) > 8
    for chunk in chunks:
        assert len(FENCE_LINE.findall(chunk.content)) % 2 == 0, chunk.content  # every fence it opens, it closes
        opened = None
        for line in chunk.content.split("\n"):
            if FENCE_LINE.match(line):
                opened = None if opened else line
            elif "print(" in line:  # code sits inside its fence, re-opened with its info string
                assert opened == '```python title="example.py"', chunk.content
    lines = [line for chunk in chunks for line in chunk.content.split("\n") if "print(" in line]
    assert set(lines) == set(code.split("\n"))  # nothing lost
    assert all(chunk.content.lstrip().startswith(("```python", "~~~", "Run", "Then", "Paragraph"))
               for chunk in chunks), [c.content[:40] for c in chunks]


def test_a_code_fence_with_blank_lines_and_hash_lines_is_one_piece():
    fence = "```python\n# a comment, not a heading\n\nx = 1\n\n\ny = 2\n```"
    content = _long_text(6, 6) + "\n\n" + fence + "\n\n" + _long_text(6, 6)
    chunks = chunk_section(Section("d", "", content), TOKENIZER, ChunkPolicy(80, 10))
    assert sum(fence in chunk.content for chunk in chunks) >= 1
    assert not any("```python" in chunk.content and fence not in chunk.content for chunk in chunks)


def test_each_chunk_repeats_the_end_of_the_one_before():
    chunks = chunk_section(Section("d", "", _long_text(1, 60)), TOKENIZER, ChunkPolicy(100, 30))
    assert len(chunks) > 3
    for before, after in zip(chunks, chunks[1:]):
        first_sentence = re.match(r"[^.]*\.", after.content)[0]
        assert first_sentence in before.content  # carried over
        assert TOKENIZER.count(first_sentence) <= 30


def test_a_sentence_longer_than_a_chunk_is_cut_at_token_boundaries():
    content = " ".join(f"w{i}" for i in range(2000))  # no sentence end anywhere
    chunks = chunk_section(Section("d", "T", content), TOKENIZER, ChunkPolicy(100, 0))
    assert all(_tokens(chunk) <= 100 for chunk in chunks)
    assert "".join(chunk.content for chunk in chunks).replace(" ", "") == content.replace(" ", "")


def test_only_documents_are_chunked_unless_every_section_is_asked_for():
    record = Section("r1", "", _long_text(4, 8))
    document = Section("doc.md", "", _long_text(4, 8), from_document=True)
    policy = ChunkPolicy(64, 0)
    ids = [s.id for s in chunk_sections([record, document], TOKENIZER, policy)]
    assert ids[0] == "r1" and all(i.startswith(f"doc.md{CHUNK_MARK}") for i in ids[1:]) and len(ids) > 2
    ids = [s.id for s in chunk_sections([record], TOKENIZER, policy, every_section=True)]
    assert len(ids) > 1 and all(i.startswith(f"r1{CHUNK_MARK}") for i in ids)


@pytest.mark.parametrize("tokens, overlap, message", [
    (8, 0, "--chunk-tokens must be at least 16"),
    (100, 51, "--chunk-overlap must be between 0 and half"),
    (100, -1, "--chunk-overlap must be between 0 and half"),
])
def test_bad_policies_are_refused_with_the_option_named(tokens, overlap, message):
    with pytest.raises(ValueError, match=message):
        ChunkPolicy(tokens, overlap)


def test_default_overlap_is_an_eighth_capped_at_64():
    assert default_overlap(254) == 31 and default_overlap(8191) == 64


def _doc(section_id: str, content: str, headings: list[str], source: str = "/d/api.md") -> Section:
    return Section(section_id, " > ".join(headings) or "api", content,
                   {"source": "api.md", "headings": headings, "line": 1}, from_document=True, source=source)


def test_sections_of_fewer_than_five_words_are_folded_into_a_neighbour_of_their_file():
    sections = [
        _doc("api.md", "import Thing", []),  # first in its file: goes to the first big one after it
        _doc("api.md#options", "Options change how the builder writes each page.", ["Options"]),
        _doc("api.md#options/name", "**Type:** string", ["Options", "name"]),  # into the one above
        _doc("api.md#options/out", "Where the pages are written, relative to the root.", ["Options", "out"]),
        _doc("api.md#options/out/default", "`site/`", ["Options", "out", "Default"]),
        _doc("tiny.md", "Just this.", [], source="/d/tiny.md"),  # a file of one small section keeps it
        Section("r1", "", "ok"),  # a record: never folded
    ]
    folded = list(chunk_sections(sections, TOKENIZER, ChunkPolicy(500)))
    assert [s.id for s in folded] == ["api.md#options", "api.md#options/out", "tiny.md", "r1"]
    assert folded[0].content == ("import Thing\n\nOptions change how the builder writes each page.\n\n"
                                 "name\n**Type:** string")
    assert folded[1].content == "Where the pages are written, relative to the root.\n\nDefault\n`site/`"
    assert folded[0].metadata["headings"] == ["Options"]
