"""Real English text that every Python installation ships, cut into sections of a chosen size.

Tests and benchmarks need realistic sections (prose and code, ~350 tokens each) without any
download. The standard library's docstrings are exactly that; they are read with ``ast`` from
the source files, so no module is imported (some stdlib modules have side effects on import).
"""
from __future__ import annotations

import ast
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sections.engine.tokens import TiktokenTokenizer


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "turtledemo", "lib2to3"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 80:
                yield doc


@lru_cache(maxsize=4)
def _token_stream(min_tokens: int) -> tuple[list[int], list[tuple[int, str]]]:
    """Token ids of stdlib docstrings (at least ``min_tokens`` of them, or all there are), with
    the offset where each source module's text starts."""
    tokenizer = TiktokenTokenizer()
    encode = tokenizer._enc.encode_ordinary
    ids: list[int] = []
    starts: list[tuple[int, str]] = []
    for path in _stdlib_files():
        text = "\n\n".join(_docstrings(path))
        if not text:
            continue
        starts.append((len(ids), path.stem))
        ids.extend(encode(text + "\n\n"))
        if len(ids) >= min_tokens:
            break
    return ids, starts


def stdlib_sections(count: int, tokens_per_section: int = 350) -> list[dict]:
    """``count`` sections of about ``tokens_per_section`` tokens of stdlib docstrings.

    Ids are stable (``stdlib-000001``); titles name the module the text comes from. When the
    stdlib runs out, the text wraps around with a numbered prefix so every section stays unique.
    """
    ids, starts = _token_stream(count * tokens_per_section)
    decode = TiktokenTokenizer()._enc.decode
    sections = []
    n_chunks = max(1, len(ids) // tokens_per_section)
    module_at = 0
    for i in range(count):
        chunk = i % n_chunks
        offset = chunk * tokens_per_section
        while module_at + 1 < len(starts) and starts[module_at + 1][0] <= offset:
            module_at += 1
        if chunk == 0:
            module_at = 0
        text = decode(ids[offset: offset + tokens_per_section]).strip()
        if i >= n_chunks:
            text = f"(copy {i // n_chunks}) {text}"
        title = starts[module_at][1] if starts else "stdlib"
        sections.append({"id": f"stdlib-{i + 1:06d}", "title": title, "content": text})
    return sections


def pydoc_sections(max_chars: int = 1500) -> list[dict]:
    """Python's own language reference (``pydoc_data.topics``, shipped with every CPython) as
    sections: each topic cut at paragraph breaks into pieces of about ``max_chars`` characters.

    Ids are ``pydoc/<topic>#<n>`` and titles the topic's first line, so a search hit names the
    part of the reference it comes from.
    """
    from pydoc_data.topics import topics

    sections = []
    for topic in sorted(topics):
        text = topics[topic].strip()
        heading = text.splitlines()[0].strip() if text else topic
        pieces, current = [], ""
        for paragraph in text.split("\n\n"):
            if current and len(current) + len(paragraph) > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current.strip():
            pieces.append(current)
        for n, piece in enumerate(pieces, 1):
            sections.append({"id": f"pydoc/{topic}#{n}", "title": heading, "content": piece.strip()})
    return sections
