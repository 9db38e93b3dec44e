"""Read a Markdown or MDX document the way its author meant it: sections, titles and text.

markdown-it (CommonMark) finds the structure: headings (ATX, setext), fences, indented code, HTML
blocks, with their lines. Front matter becomes metadata; MDX import/export statements go before parsing;
MkDocs admonition and tab bodies are read as Markdown; tags go, their text (children and the props a
reader sees: ``sections.reading.markup``) stays; comments, mkdocstrings and include lines go; code is
kept verbatim. A section's id is its heading path (`install/linux`, or an
explicit `{#id}` starting a path of its own), numbered only among identical siblings: editing one heading
changes no id outside its own subtree.
"""
from __future__ import annotations

import datetime as dt
import math
import re
import textwrap
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from sections.reading.markup import dedent_fences, strip_markup, unwrap_mdx_code_blocks

__all__ = ["DocSection", "Document", "DocumentError", "Outline", "Part", "Skip", "NO_TEXT",
           "build_sections", "read_markdown", "slug"]

NO_TEXT = "no text after cleaning"  # why a section with nothing but markup is left out
MAX_FRONT_MATTER_VALUES = 10_000  # more is refused: YAML aliases can make a small file expand enormously

_MD = MarkdownIt("commonmark").disable("inline")  # blocks only: titles are parsed by _INLINE
_MDX = MarkdownIt("commonmark").disable(["inline", "html_block", "code"])  # JSX lines are inline; no indented code
_INLINE = MarkdownIt("commonmark")
_MAX_PASSES = 8  # parses that can each reveal more admonition bodies nested one level deeper

_ESM = re.compile(r"(?:import|export)(?:\s|\{|$)")
_CONTINUES = ("=", ",", "=>")
_STRINGS = re.compile(r"\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'|`(?:\\.|[^`\\])*`")
_BODY_MARKER = re.compile(r"\s*(?:!!!|\?\?\?\+?|===\+?)\s")
_MKDOCS_LABEL = re.compile(r"\s*(?:!!!|\?\?\?\+?)\s+([\w-]+)[\w\s-]*?(?:\"([^\"]*)\")?\s*$")
_TAB_LABEL = re.compile(r"\s*===\+?\s+\"([^\"]*)\"\s*$")
_FENCED_LABEL = re.compile(r"\s*(?::{3,}|/{3,}[ \t]*)(?:([A-Za-z][\w-]*)(?:\[(.*)\]|[ \t]*\|)?(.*))?$")
_DIRECTIVE = re.compile(r" {0,3}:::[ \t]+\S")
_INCLUDE = re.compile(r"\s*(?:\{\*.*\*\}|\{!.*!\}|--8<--.*)\s*$")
_ATTR_LIST = re.compile(  # MkDocs attr_list at the end of a heading: {#id .class key=value}
    r"\s*\{:?((?:\s*(?:#[\w:.-]+|\.[\w-]+|[\w-]+=(?:\"[^\"]*\"|'[^']*'|[^\s\"'}]+)))+)\s*\}\s*$")
_ATTR_ID = re.compile(r"(?:^|\s)#([\w:.-]+)")
_NOT_SLUG = re.compile(r"[\W_]+")
_WORD = re.compile(r"[^\W_]")
_LINE_RUN = re.compile(r"(?:^[ \t]*\S.*(?:\n|$))+", re.MULTILINE)  # lines up to a blank one
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
_LIST_ITEM = re.compile(r"\s*(?:[-*+]|\d+[.)])\s")


class DocumentError(ValueError):
    """The document cannot be read as written (invalid front matter); `line` is 1-based."""
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class DocSection:
    """One stored section: `path` is "" for the text before the first heading, else its heading path."""
    path: str
    title: str
    content: str
    line: int
    headings: tuple[str, ...]


class Skip(NamedTuple):
    """A section left out although it held something, and why."""
    line: int
    reason: str


@dataclass
class Document:
    """What a file holds: its front matter, the sections to store, and the ones left out."""
    metadata: dict[str, Any]
    sections: list[DocSection] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


class Part(NamedTuple):
    """A heading (level 1-6; 0 for the text before the first one) and its cleaned text."""
    level: int
    title: str
    anchor: str | None  # an explicit id, which starts a heading path of its own
    line: int
    content: str
    had_text: bool  # anything but blank lines under it before cleaning


def slug(title: str) -> str:
    """Lowercase letters, digits and hyphens ("section" when nothing is left)."""
    return _NOT_SLUG.sub("-", title.lower()).strip("-") or "section"


def _numbered(base: str, used: dict[str, int]) -> str:
    """`base`, else `base-2`, `base-3`... the first name not used yet; `used` maps names to the last number given."""
    number = used.get(base, 0)
    name = f"{base}-{number}" if number else base
    while name in used:
        number = max(number, 1) + 1
        name = f"{base}-{number}"
    used[base] = number
    used.setdefault(name, 0)
    return name


class Outline:
    """Gives headings their paths, in document order; a heading's level closes deeper ones."""

    def __init__(self) -> None:
        self._open: list[tuple[int, str, str, dict[str, int]]] = []  # level, title, path, its children's slugs
        self._roots: dict[str, int] = {}  # top-level slugs and explicit ids share one namespace

    def add(self, level: int, title: str, anchor: str | None) -> tuple[str, tuple[str, ...]]:
        """(heading path, titles of the open headings and this one) for the next heading."""
        while self._open and self._open[-1][0] >= level:
            self._open.pop()
        if anchor or not self._open:
            path = _numbered(anchor or slug(title), self._roots)
        else:
            parent = self._open[-1]
            path = f"{parent[2]}/{_numbered(slug(title), parent[3])}"
        headings = tuple(item[1] for item in self._open) + (title,)
        self._open.append((level, title, path, {}))
        return path, headings


def build_sections(parts: Iterable[Part], document: Document) -> Document:
    """Add each part to the document as a section, as a skip (markup only), or not at all (blank)."""
    outline = Outline()
    for part in parts:
        path, headings = outline.add(part.level, part.title, part.anchor) if part.level else ("", ())
        if _WORD.search(part.content):
            document.sections.append(DocSection(path, part.title, part.content, part.line, headings))
        elif part.had_text:
            document.skipped.append(Skip(part.line, NO_TEXT))
    return document


def read_markdown(text: str, *, title: str, mdx: bool = False) -> Document:
    """Read a Markdown (or, with `mdx`, MDX) document; `title` names the text before the first heading
    unless the front matter has a string `title`. Raises DocumentError for invalid front matter."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    metadata, taken = _front_matter(lines)
    lines[:taken] = [""] * taken
    mdx = unwrap_mdx_code_blocks(lines) or mdx  # a file that wraps JSX in mdx-code-block is MDX
    if mdx:
        dedent_fences(lines)
    if isinstance(metadata.get("title"), str):
        title = metadata["title"]
    tokens, nested = _settle(lines, mdx)
    code = {line for token in tokens if token.type in ("fence", "code_block") and token.map
            for line in range(*token.map)}
    headings = [(index, token.map) for index, token in enumerate(tokens)
                if token.type == "heading_open" and token.level == 0 and token.map and token.map[0] not in nested]
    ends = [start for _, (start, _) in headings] + [len(lines)]
    first = next((n for n in range(ends[0]) if lines[n].strip()), 0)
    parts = [_part(lines, 0, title, None, first, first, ends[0], code, mdx)]
    for (index, (start, stop)), end in zip(headings, ends[1:]):
        level = int(tokens[index].tag[1])
        heading, anchor = _title(tokens[index + 1].content)
        parts.append(_part(lines, level, heading, anchor, start, stop, end, code, mdx))
    return build_sections(parts, Document(metadata))


def _part(lines: list[str], level: int, title: str, anchor: str | None, line: int, start: int, end: int,
          code: set[int], mdx: bool) -> Part:
    """The part whose text is lines[start:end]: prose cleaned, code as written."""
    pieces, had_text, index = [], False, start
    while index < end:
        stop, is_code = index, index in code
        while stop < end and (stop in code) == is_code:
            stop += 1
        chunk = lines[index:stop]
        had_text = had_text or any(text.strip() for text in chunk)
        pieces.append("\n".join(chunk) if is_code else _clean_prose(chunk, mdx))
        index = stop
    content = _LEADING_BLANK_LINES.sub("", "\n".join(pieces)).rstrip()
    return Part(level, title, anchor, line + 1, content, had_text)


# --- front matter -----------------------------------------------------------------------------


def _front_matter(lines: list[str]) -> tuple[dict[str, Any], int]:
    """(fields, lines it takes) of the front matter on the first line; ({}, 0) when there is none."""
    opener = lines[0].rstrip() if lines else ""
    kind, closers = {"---": ("YAML", ("---", "...")), "+++": ("TOML", ("+++",))}.get(opener, ("", ()))
    end = next((n for n in range(1, len(lines)) if lines[n].rstrip() in closers), None) if kind else None
    if end is None:
        return {}, 0  # none, or no closing line: a thematic break, not front matter
    body = "\n".join(lines[1:end])
    try:
        value = yaml.safe_load(body) if kind == "YAML" else tomllib.loads(body)
        fields = _as_json(value, [MAX_FRONT_MATTER_VALUES]) if isinstance(value, dict) else value
    except DocumentError:
        raise
    except yaml.MarkedYAMLError as error:
        line = 2 + error.problem_mark.line if error.problem_mark else 1
        raise DocumentError(line, f"invalid YAML front matter: {error.problem or error}") from None
    except tomllib.TOMLDecodeError as error:
        found = re.search(r"at line (\d+)", str(error))  # else "at end of document": its last line
        raise DocumentError(1 + int(found[1]) if found else end, f"invalid TOML front matter: {error}") from None
    except Exception as error:  # a third-party parser on any input (or nested too deeply): never a crash
        raise DocumentError(1, f"invalid {kind} front matter: {error}") from None
    if fields is not None and not isinstance(fields, dict):
        raise DocumentError(1, f"{kind} front matter must be a mapping of fields, not {type(fields).__name__}")
    return fields or {}, end + 1


def _as_json(value: Any, budget: list[int]) -> Any:
    """Front matter as JSON values (keys, dates and non-finite floats as text), at most `budget` of them."""
    budget[0] -= 1
    if budget[0] < 0:
        raise DocumentError(1, f"front matter holds over {MAX_FRONT_MATTER_VALUES} values")
    if isinstance(value, dict):
        return {str(key): _as_json(inner, budget) for key, inner in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_as_json(inner, budget) for inner in value]
    if value is None or isinstance(value, (str, int)) or isinstance(value, float) and math.isfinite(value):
        return value
    return value.isoformat() if isinstance(value, (dt.date, dt.time)) else str(value)


# --- structure --------------------------------------------------------------------------------


def _settle(lines: list[str], mdx: bool) -> tuple[list[Token], set[int]]:
    """Parse, removing MDX statements and reading admonition bodies as Markdown, until stable.

    Changes `lines` in place, never their number, so every token's line range is the file's.
    Returns the tokens and the lines of admonition bodies (headings there do not start sections).
    """
    parser = _MDX if mdx else _MD
    nested: set[int] = set()
    markers: set[int] = set()  # marker lines whose body has been read already
    for _ in range(_MAX_PASSES):
        tokens = parser.parse("\n".join(lines))
        changed = _drop_statements(tokens, lines) if mdx else False
        for index, token in enumerate(tokens):
            if token.type == "code_block" and token.level == 0 and token.map:
                marker = _marker_before(tokens, index, lines)
                if marker is not None and marker not in markers:
                    markers.add(marker)
                    for line in range(*token.map):
                        lines[line] = _unindent(lines[line])
                        nested.add(line)
                    changed = True
        if not changed:
            return tokens, nested
    return parser.parse("\n".join(lines)), nested


def _marker_before(tokens: list[Token], index: int, lines: list[str]) -> int | None:
    """The line of `!!! kind`, `??? kind` or `=== "Tab"` ending the paragraph before this block, or None."""
    paragraph = tokens[index - 3].map if index >= 3 and tokens[index - 1].type == "paragraph_close" else None
    return paragraph[1] - 1 if paragraph and _BODY_MARKER.match(lines[paragraph[1] - 1]) else None


def _unindent(line: str) -> str:
    """The line with one level (four columns) of indentation removed."""
    for index, char in enumerate(line[:4]):
        if char == "\t":
            return line[index + 1:]
        if char != " ":
            return line[index:]
    return line[4:]


def _drop_statements(tokens: list[Token], lines: list[str]) -> bool:
    """Blank the MDX import/export statements that open a top-level paragraph; True if any."""
    changed = False
    for token in tokens:
        if token.type == "paragraph_open" and token.level == 0 and token.map and _ESM.match(lines[token.map[0]]):
            start, end = token.map[0], _statement_end(lines, token.map[0])
            lines[start:end], changed = [""] * (end - start), True
    return changed


def _statement_end(lines: list[str], start: int) -> int:
    """The line after the statement(s) starting at `start`: brackets balanced and not continued."""
    depth, index = 0, start
    while index < len(lines):
        code = _STRINGS.sub("", lines[index])
        depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
        index += 1
        if depth <= 0 and not code.rstrip().endswith(_CONTINUES):
            if index < len(lines) and lines[index].strip() and _ESM.match(lines[index]):
                continue  # the next statement in the same block
            return index
    return next((n for n in range(start + 1, len(lines)) if not lines[n].strip()), len(lines))


# --- cleaning ---------------------------------------------------------------------------------


def _clean_prose(chunk: list[str], mdx: bool) -> str:
    """Prose lines without directives, includes, tags or comments, blank runs made one blank line."""
    kept: list[str] = []
    directive_indent: int | None = None
    for line in chunk:
        indent = len(line) - len(line.lstrip())
        if directive_indent is not None and (not line.strip() or indent > directive_indent):
            continue  # the directive's own options block
        directive_indent = None
        if _DIRECTIVE.match(line):
            directive_indent = indent
        elif not _INCLUDE.match(line):
            kept.append(_label(line))
    out: list[str] = []
    cleaned = _LINE_RUN.sub(lambda run: textwrap.dedent(run[0]), strip_markup("\n".join(kept), mdx))
    for line in cleaned.split("\n"):  # each run of lines dedented: JSX children are indented
        line = line.strip() if mdx and not _LIST_ITEM.match(line) else line.rstrip()  # a tag's words start lines
        if line or not out or out[-1]:
            out.append(line)
    return "\n".join(out)


def _label(line: str) -> str:
    """An admonition or tab opening (or closing) line as its label ('Note', its title, or nothing)."""
    if found := _MKDOCS_LABEL.match(line):
        return found[1].capitalize() if found[2] is None else found[2]
    if found := _TAB_LABEL.match(line):
        return found[1]
    if found := _FENCED_LABEL.match(line):  # Docusaurus :::tip[Title], pymdownx /// tip | Title
        label = found[2] if found[2] is not None else (found[3] or "").strip()
        return label or (found[1] or "").capitalize()
    return line


def _title(raw: str) -> tuple[str, str | None]:
    """A heading's plain text (tags, markup and an attribute list removed) and its explicit id."""
    parts: list[str] = []
    for token in _INLINE.parseInline(strip_markup(raw, mdx=True)):
        for child in token.children or []:
            if child.type in ("text", "text_special", "code_inline", "image"):
                parts.append(child.content)
            elif child.type in ("softbreak", "hardbreak"):
                parts.append(" ")
    text, anchor = _split_attributes("".join(parts))
    return " ".join(text.split()), anchor


def _split_attributes(text: str) -> tuple[str, str | None]:
    """Remove a trailing attr_list (`{#id .class key=value}`) and return its id, if it has one."""
    found = _ATTR_LIST.search(text)
    if not found:
        return text, None
    anchor = _ATTR_ID.search(found[1])
    return text[:found.start()], anchor[1] if anchor else None
