"""Markup taken out of prose: HTML/JSX tags (keeping the words a reader sees), comments, and
Docusaurus ``mdx-code-block`` fences unwrapped.

A component's words often live in its props, not its children: a page of
``<LinkCard title="…" description="…" />`` is nothing but props, and dropping every tag leaves it
empty. So a tag is replaced by its string props that a reader sees (``TEXT_PROPS``), in the order
written, and its expression props (``config={[…]}``) go with the tag: they are code, not prose.
Tags are scanned, not matched by one pattern, so an expression of any depth (JS literals,
template strings, nested objects, over many lines) ends where its braces close.
"""
from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["TEXT_PROPS", "Tag", "dedent_fences", "scan_tag", "strip_markup", "unwrap_mdx_code_blocks"]

TEXT_PROPS = frozenset({"title", "description", "label", "alt", "caption"})
PROP_JOINER = " — "  # between the words of one tag's props: "Link checker — Finds broken links"
MAX_TAG_CHARS = 20_000  # a "tag" longer than this is text with a stray "<" in it

_SPECIAL = re.compile(r"[\\<{]|`+")
_BACKTICKS = re.compile(r"`+")
_NAME = re.compile(r"[A-Za-z][\w.-]*")
_PROP = re.compile(r"[^\s\"'<>/={}]+")
_UNQUOTED = re.compile(r"[^\s\"'=<>`{}]+")
_FENCE_OPEN = re.compile(r"^([ \t]*)(`{3,}|~{3,})(.*)$")
_MDX_CODE_BLOCK = "mdx-code-block"


class Tag(NamedTuple):
    """A tag scanned at some offset: where it ends, and the words its text props hold."""
    end: int
    words: tuple[str, ...]


def scan_tag(text: str, start: int) -> Tag | None:
    """The HTML/JSX tag (or fragment ``<>``/``</>``) that starts at ``text[start]`` (a ``<``), or None
    when what starts there is not one (``a < b``, ``<3``)."""
    limit = min(len(text), start + MAX_TAG_CHARS)
    index = start + 1
    if text.startswith("/", index):
        index += 1
    name = _NAME.match(text, index)
    if name is None:
        index = _after_space(text, index)
        return Tag(index + 1, ()) if text.startswith(">", index) and index < limit else None
    index, words = name.end(), list[str]()
    if index < limit and not (text[index].isspace() or text[index] in "/>"):
        return None  # <me@example.com>: an autolink, not a tag
    while index < limit:
        index = _after_space(text, index)
        if text.startswith("/>", index):
            return Tag(index + 2, tuple(words))
        if text.startswith(">", index):
            return Tag(index + 1, tuple(words))
        if text.startswith("{", index):  # a spread, {...props}
            found = _expression_end(text, index, limit)
            if found is None:
                return None
            index = found
            continue
        prop = _PROP.match(text, index)
        if prop is None:
            return None
        index = _after_space(text, prop.end())
        if not text.startswith("=", index):
            continue  # a boolean prop: `default`
        index = _after_space(text, index + 1)
        quote = text[index:index + 1]
        if quote in ("\"", "'"):
            close = text.find(quote, index + 1, limit)
            if close < 0:
                return None
            value = " ".join(text[index + 1:close].split())
            if prop[0] in TEXT_PROPS and value:
                words.append(value)
            index = close + 1
        elif quote == "{":
            found = _expression_end(text, index, limit)
            if found is None:
                return None
            index = found
        elif unquoted := _UNQUOTED.match(text, index):
            index = unquoted.end()
        else:
            return None
    return None


def _after_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _expression_end(text: str, start: int, limit: int) -> int | None:
    """The offset after the ``}`` that closes the JSX expression opened at ``text[start]``; strings
    (quotes, template literals) and comments may hold any bracket."""
    depth, index = 0, start
    while index < limit:
        char = text[index]
        if char in "\"'`":
            close = index + 1
            while close < limit and text[close] != char:
                close += 2 if text[close] == "\\" else 1
            index = close + 1
            continue
        if text.startswith("/*", index):
            close = text.find("*/", index + 2, limit)
            index = limit if close < 0 else close + 2
            continue
        if text.startswith("//", index):
            close = text.find("\n", index, limit)
            index = limit if close < 0 else close + 1
            continue
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return None


def strip_markup(text: str, mdx: bool = False) -> str:
    """Remove HTML/JSX tags (each replaced by the words of its text props), HTML comments and, with
    `mdx`, `{/* */}` comments; inline code spans and backslash escapes are copied as they are."""
    out: list[str] = []
    index, size = 0, len(text)
    while index < size:
        found = _SPECIAL.search(text, index)
        if not found:
            out.append(text[index:])
            break
        out.append(text[index:found.start()])
        index = found.start()
        char = text[index]
        if char == "\\":
            out.append(text[index:index + 2])
            index += 2
        elif char == "`":
            end = _code_span_end(text, found.end(), len(found[0]))
            out.append(text[index:end])
            index = end
        elif text.startswith("<!--", index) and (close := text.find("-->", index + 4)) >= 0:
            index = close + 3
        elif char == "<" and (tag := scan_tag(text, index)):
            out.append(PROP_JOINER.join(tag.words))
            index = tag.end
        elif mdx and text.startswith("{/*", index) and (close := text.find("*/}", index + 3)) >= 0:
            index = close + 3
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _code_span_end(text: str, after: int, length: int) -> int:
    """The end of the code span whose `length` backticks end at `after` (or `after`, if none closes it)."""
    for closing in _BACKTICKS.finditer(text, after):
        if len(closing[0]) == length:
            return closing.end()
    return after


def unwrap_mdx_code_blocks(lines: list[str]) -> bool:
    """Blank the fences of ``mdx-code-block`` blocks (Docusaurus wraps JSX in them so a Markdown
    file can hold it), so what they hold is read as MDX, not kept as code; True if there were any.
    Changes `lines` in place, never their number."""
    found, index = False, 0
    while index < len(lines):
        opening = _FENCE_OPEN.match(lines[index])
        if opening is None:
            index += 1
            continue
        close = _closing_fence(lines, index + 1, opening[2])
        if opening[3].strip() == _MDX_CODE_BLOCK:
            lines[index] = ""
            if close < len(lines):
                lines[close] = ""
            found = True
            index += 1  # what it held is read again: it may hold fences of its own
        else:
            index = close + 1
    return found


def dedent_fences(lines: list[str]) -> None:
    """MDX has no indented code, so a fence indented inside a component (``<TabItem>`` children,
    four spaces in) is still a fence: it and its lines move left by its indentation, so the
    Markdown parser sees it as one. Changes `lines` in place, never their number."""
    index = 0
    while index < len(lines):
        opening = _FENCE_OPEN.match(lines[index])
        if opening is None:
            index += 1
            continue
        close = _closing_fence(lines, index + 1, opening[2])
        width = len(opening[1].expandtabs(4))
        if width >= 4:
            for line in range(index, min(close + 1, len(lines))):
                lines[line] = _dedent(lines[line], width)
        index = close + 1


def _closing_fence(lines: list[str], start: int, fence: str) -> int:
    """The line of the fence that closes one opened with ``fence``; len(lines) if none does."""
    for index in range(start, len(lines)):
        found = _FENCE_OPEN.match(lines[index])
        if found and found[2][0] == fence[0] and len(found[2]) >= len(fence) and not found[3].strip():
            return index
    return len(lines)


def _dedent(line: str, width: int) -> str:
    """The line with up to ``width`` columns of leading whitespace removed."""
    taken = 0
    for index, char in enumerate(line):
        if taken >= width or char not in " \t":
            return line[index:]
        taken += 4 - taken % 4 if char == "\t" else 1
    return ""
