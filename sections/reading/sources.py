"""Read document sections from files, folders and stdin, validated before anything is spent.

Callers pay for every section they embed, so nothing is handed on until every input has been
checked. `open_sources` makes a first pass over all inputs that keeps only the ids seen (and where
each was first seen), never the sections; the `SectionSource` it returns streams the sections in a
second pass. Memory therefore stays flat however large the inputs are; the one exception is a
`.json` document, which is parsed whole (JSONL is the format for huge inputs).

Formats: JSONL (`.jsonl`, `.ndjson`, and stdin), JSON (`.json`: an array of sections or an object
with a `sections` array), CSV (`.csv` with columns id, title, content; other columns become
metadata), Markdown and MDX (`.md`, `.markdown`, `.mdx`: one section per heading, read by
sections.reading.markdown), reStructuredText (`.rst`: one section per underlined title) and plain text (`.txt`:
one section per file). Folders are searched recursively, skipping hidden entries; files of other
types found there are counted by extension, not read.

Sections read from document files carry metadata `source` (the relative path), `headings` (the
titles above it and its own) and `line`, plus the Markdown front matter's fields. Every section read
from a file (records too) carries `Section.source`, the file's absolute path: `--prune` and
`delete --source` find a file's sections by it.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
import tempfile
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, TextIO

from sections.reading.markdown import Document, DocumentError, Part, build_sections, read_markdown
from sections.records import Section, section_problem

__all__ = ["Section", "SectionSource", "SourceError", "SourceProblem", "open_sources"]

MAX_KEPT_PROBLEMS = 1000
"""Problems kept in memory; a garbage input can hold millions, so the rest are only counted."""

MAX_SHOWN_PROBLEMS = 20
"""Problems listed in a SourceError's message; more would bury the first ones on a terminal."""

MAX_KEPT_UNREAD = 1000
"""Paths of unread files kept for a verbose listing; the rest are only counted."""

_KINDS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "mdx",
    ".txt": "text",
    ".rst": "rst",
}
_STDIN_NAME = "<stdin>"
_DOCUMENT_KINDS = frozenset({"markdown", "mdx", "rst", "text"})
_RECORD_FIELDS = ("id", "title", "content", "metadata")
_CSV_COLUMNS = ("id", "title", "content")
_ABSENT = object()


@dataclass(frozen=True)
class SourceProblem:
    """Something wrong with one place in the inputs; `line` is None when it concerns a whole file."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


class SourceError(ValueError):
    """Raised when inputs are invalid and skip_invalid is False.

    `problems` holds the first MAX_KEPT_PROBLEMS problems and `problem_count` how many there were
    in all; the message lists the first MAX_SHOWN_PROBLEMS, one per line.
    """

    def __init__(self, problems: Sequence[SourceProblem], problem_count: int | None = None):
        self.problems = list(problems)
        self.problem_count = len(self.problems) if problem_count is None else problem_count
        lines = [str(problem) for problem in self.problems[:MAX_SHOWN_PROBLEMS]]
        if self.problem_count > len(lines):
            lines.append(f"... and {self.problem_count - len(lines)} more")
        super().__init__("\n".join(lines))


class SectionSource:
    """Validated inputs: iterate to stream Section objects (the second pass).

    Every iteration re-reads the inputs, so it can be iterated more than once and holds no
    sections in memory. Built by `open_sources`. Besides the sections and problems, what was left
    out without being wrong: `skipped` (reason -> sections, e.g. "no text after cleaning"),
    `unread` (extension -> files of other types in the folders, "" for none) and `unread_paths`
    (the first MAX_KEPT_UNREAD of those files).
    """

    def __init__(
        self,
        inputs: list[_Input],
        *,
        count: int,
        problems: list[SourceProblem],
        problem_count: int,
        skip_invalid: bool,
        skipped: Counter[str] | None = None,
        unread: Counter[str] | None = None,
        unread_paths: list[str] | None = None,
    ):
        self.count = count
        self.problems = problems
        self.problem_count = problem_count
        self.skipped: Counter[str] = skipped if skipped is not None else Counter()
        self.unread: Counter[str] = unread if unread is not None else Counter()
        self.unread_paths: list[str] = unread_paths if unread_paths is not None else []
        self._inputs = inputs
        self._skip_invalid = skip_invalid

    @property
    def files(self) -> tuple[str, ...]:
        """The files read (absolute POSIX paths, as each of their sections' ``source``); stdin is none."""
        return tuple(Path(os.path.abspath(item.path)).as_posix() for item in self._inputs if item.name != _STDIN_NAME)

    @property
    def has_documents(self) -> bool:
        """Whether any input is a document (Markdown, MDX, reST, text), whose ids are paths: records
        carry ids of their own."""
        return any(item.kind in _DOCUMENT_KINDS for item in self._inputs)

    def __iter__(self) -> Iterator[Section]:
        """Yield the valid sections; a problem here means an input changed since validation."""
        for item in _checked(self._inputs):
            if isinstance(item, Section):
                yield item
            elif isinstance(item, SourceProblem) and not self._skip_invalid:
                changed = f"{item.message} (the input changed after it was validated)"
                raise SourceError([SourceProblem(item.path, item.line, changed)])


def open_sources(
    paths: Sequence[str | os.PathLike],
    *,
    skip_invalid: bool = False,
    stdin: TextIO | None = None,
) -> SectionSource:
    """Validate every input and return a SectionSource that streams their sections.

    Raises SourceError listing every problem found, unless skip_invalid is True, in which case the
    invalid records (and later duplicates of an id) are left out and listed in `.problems`. A path
    that does not exist is always an error: it is almost certainly a typo, not bad data.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError("open_sources takes a sequence of paths, not a single path")
    names = [os.fsdecode(path) for path in paths]
    missing = [SourceProblem(name, None, "no such file or directory")
               for name in names if name != "-" and not os.path.exists(name)]
    if missing:
        raise SourceError(missing)
    stdin_copy = _spool(stdin if stdin is not None else sys.stdin) if "-" in names else None
    try:
        source = _validate(names, stdin_copy, skip_invalid)
    except BaseException:
        if stdin_copy:
            _remove(stdin_copy)
        raise
    if stdin_copy:
        weakref.finalize(source, _remove, stdin_copy)
    return source


# --- the two passes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    """One file to read: `name` is shown in messages, `path` is opened, `rel` is the id base for
    Markdown and text files (POSIX path relative to the folder the user named)."""

    name: str
    path: str
    kind: str
    rel: str


@dataclass(frozen=True)
class _Skipped:
    """A section a reader left out on purpose (not an error), and why."""

    reason: str


@dataclass
class _Listing:
    """The files to read, and what listing the folders found: problems and files of other types."""

    inputs: list[_Input]
    problems: list[SourceProblem]
    unread: Counter[str]
    unread_paths: list[str]


class _Problems:
    """Keeps the first MAX_KEPT_PROBLEMS problems and counts all of them."""

    def __init__(self) -> None:
        self.kept: list[SourceProblem] = []
        self.count = 0

    def add(self, problem: SourceProblem) -> None:
        self.count += 1
        if len(self.kept) < MAX_KEPT_PROBLEMS:
            self.kept.append(problem)


def _validate(names: list[str], stdin_copy: str | None, skip_invalid: bool) -> SectionSource:
    """The first pass: count the valid sections and collect the problems, keeping no sections."""
    listing = _list_inputs(names, stdin_copy)
    problems = _Problems()
    for problem in listing.problems:
        problems.add(problem)
    count = 0
    skipped: Counter[str] = Counter()
    for item in _checked(listing.inputs):
        if isinstance(item, Section):
            count += 1
        elif isinstance(item, _Skipped):
            skipped[item.reason] += 1
        else:
            problems.add(item)
    if problems.count and not skip_invalid:
        raise SourceError(problems.kept, problems.count)
    return SectionSource(listing.inputs, count=count, problems=problems.kept, problem_count=problems.count,
                         skip_invalid=skip_invalid, skipped=skipped, unread=listing.unread,
                         unread_paths=listing.unread_paths)


def _checked(inputs: list[_Input]) -> Iterator[Section | SourceProblem | _Skipped]:
    """Every section and problem of every input, in order, with repeated ids turned into problems.

    Both passes run this same function, so they agree exactly on which sections are valid.
    """
    first_seen: dict[str, str] = {}
    for item in _read_all(inputs):
        if isinstance(item, Section):
            unstorable = _unstorable(item)
            if unstorable or item.id in first_seen:
                path, line = item.location.rsplit(":", 1)
                message = unstorable or f"duplicate id {item.id!r} (first seen at {first_seen[item.id]})"
                item = SourceProblem(path, int(line), message)
            else:
                first_seen[item.id] = item.location
        yield item


def _unstorable(section: Section) -> str | None:
    """Why the store could not hold this section as given, or None: checked here so that the run
    is refused before anything is spent or written, with the file and line."""
    problem = section_problem(section)
    return None if problem is None else f"section {section.id!r}: {problem}"


def _read_all(inputs: list[_Input]) -> Iterator[Section | SourceProblem | _Skipped]:
    """Read each input with the reader for its kind, turning I/O and encoding failures into problems."""
    for source in inputs:
        origin = None if source.name == _STDIN_NAME else Path(os.path.abspath(source.path)).as_posix()
        try:
            with open(source.path, "rb") as file:
                for item in _READERS[source.kind](source, file):
                    yield replace(item, source=origin) if isinstance(item, Section) and origin else item
        except _BadBytes as error:
            yield SourceProblem(source.name, error.line, error.message)
        except OSError as error:
            yield SourceProblem(source.name, None, f"cannot read: {error.strerror or error}")


# --- finding the files ------------------------------------------------------------------------


def _list_inputs(names: list[str], stdin_copy: str | None) -> _Listing:
    """Expand the paths the user gave into files, once, so both passes read the same list."""
    listing = _Listing([], [], Counter(), [])
    for name in names:
        if name == "-":
            listing.inputs.append(_Input(_STDIN_NAME, stdin_copy, "jsonl", name))
        elif os.path.isdir(name):
            _walk(name, listing)
        elif kind := _KINDS.get(os.path.splitext(name)[1].lower()):
            listing.inputs.append(_Input(name, name, kind, os.path.basename(name)))
        else:
            expected = ", ".join(_KINDS)
            listing.problems.append(SourceProblem(name, None, f"unsupported file type (expected {expected})"))
    return listing


def _walk(root: str, listing: _Listing) -> None:
    """Add the supported files under `root`, sorted so ids and order are the same on every run;
    count the others by extension (hidden files and folders are neither read nor counted)."""

    def report(error: OSError) -> None:
        listing.problems.append(SourceProblem(error.filename or root, None, f"cannot read folder: {error.strerror}"))

    for folder, subfolders, files in os.walk(root, onerror=report):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            extension = os.path.splitext(name)[1].lower()
            if kind := _KINDS.get(extension):
                listing.inputs.append(_Input(path, path, kind, Path(os.path.relpath(path, root)).as_posix()))
            else:
                listing.unread[extension] += 1
                if len(listing.unread_paths) < MAX_KEPT_UNREAD:
                    listing.unread_paths.append(path)


def _spool(stream: TextIO | None) -> str:
    """Copy stdin to a temporary file: validation and reading are two passes, stdin reads once."""
    if stream is None:
        raise SourceError([SourceProblem(_STDIN_NAME, None, "there is no standard input")])
    descriptor, path = tempfile.mkstemp(prefix="sections-stdin-", suffix=".jsonl")
    try:
        with open(descriptor, "wb") as copy:
            if (raw := getattr(stream, "buffer", None)) is not None:
                shutil.copyfileobj(raw, copy)  # bytes as given, so bad UTF-8 is reported by line
            else:
                while chunk := stream.read(1 << 16):
                    copy.write(chunk.encode("utf-8", "surrogatepass"))
    except (OSError, UnicodeError) as error:
        _remove(path)
        raise SourceError([SourceProblem(_STDIN_NAME, None, f"cannot read: {error}")]) from None
    return path


def _remove(path: str) -> None:
    """Delete the stdin copy; already gone is fine."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# --- decoding ---------------------------------------------------------------------------------


class _BadBytes(Exception):
    """A line is not UTF-8. Raised out of readers whose format cannot resume after it."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def _decode(raw: bytes, line: int) -> str:
    """Decode one line as UTF-8 (ignoring a byte-order mark on the first), naming the bad byte."""
    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"not valid UTF-8: byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line"
        raise _BadBytes(line, message) from None


def _lines(file: BinaryIO) -> Iterator[str]:
    """Decoded lines with their endings kept (as the csv module wants)."""
    for line, raw in enumerate(file, 1):
        yield _decode(raw, line)


def _json_type(value: object) -> str:
    """The JSON name of a value's type, for messages aimed at whoever wrote the JSON."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean",
             int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- records (JSONL, JSON, CSV) ---------------------------------------------------------------


def _read_jsonl(source: _Input, file: BinaryIO) -> Iterator[Section | SourceProblem]:
    """One object per line; every line stands alone, so a bad one does not stop the file."""
    for line, raw in enumerate(file, 1):
        try:
            text = _decode(raw, line)
        except _BadBytes as error:
            yield SourceProblem(source.name, line, error.message)
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            yield SourceProblem(source.name, line, f"malformed JSON: {error.msg} at column {error.colno}")
        except (ValueError, RecursionError) as error:
            yield SourceProblem(source.name, line, f"malformed JSON: {_json_limit(error)}")
        else:
            yield _section_from_json(value, source.name, line)


def _read_json(source: _Input, file: BinaryIO) -> Iterator[Section | SourceProblem]:
    """A JSON document holding an array of sections; each is reported at the line it starts on."""
    text = "".join(_lines(file))
    line, counted_to = 1, 0
    try:
        for offset, value in _json_items(text):
            line += text.count("\n", counted_to, offset)
            counted_to = offset
            yield _section_from_json(value, source.name, line)
    except json.JSONDecodeError as error:
        yield SourceProblem(source.name, error.lineno, f"malformed JSON: {error.msg} at column {error.colno}")


def _json_items(text: str) -> Iterator[tuple[int, object]]:
    """Yield (offset, value) for each section in a JSON document.

    The document is walked by hand, decoding one element at a time, because that is what tells us
    the offset (hence the line) where each section starts; json.loads would only give the values.
    """
    start = _skip_space(text, 0)
    if text.startswith("[", start):
        end = yield from _array_items(text, start)
    elif text.startswith("{", start):
        end = yield from _sections_member(text, start)
    else:
        raise json.JSONDecodeError(
            "expected an array of sections or an object with a 'sections' array", text, start)
    end = _skip_space(text, end)
    if end != len(text):
        raise json.JSONDecodeError("extra data after the end of the document", text, end)


def _array_items(text: str, start: int) -> Iterator[tuple[int, object]]:
    """Yield (offset, value) for the elements of the array at `start`; return the offset after it."""
    position = _skip_space(text, start + 1)
    if text.startswith("]", position):
        return position + 1
    while True:
        value, end = _decode_at(text, position)
        yield position, value
        position = _skip_space(text, end)
        if text.startswith("]", position):
            return position + 1
        _expect(text, position, ",", "',' or ']'")
        position = _skip_space(text, position + 1)


def _sections_member(text: str, start: int) -> Iterator[tuple[int, object]]:
    """Yield the elements of the 'sections' array of the object at `start` and check the rest of
    the object; return the offset after it."""
    found = False
    position = _skip_space(text, start + 1)
    more = not text.startswith("}", position)
    while more:
        _expect(text, position, '"', "a property name in double quotes")
        key, position = _decode_at(text, position)
        position = _skip_space(text, position)
        _expect(text, position, ":", "':'")
        position = _skip_space(text, position + 1)
        if key == "sections":
            _expect(text, position, "[", "'sections' to be an array")
            position = yield from _array_items(text, position)
            found = True
        else:
            _, position = _decode_at(text, position)
        position = _skip_space(text, position)
        more = text.startswith(",", position)
        if more:
            position = _skip_space(text, position + 1)
        else:
            _expect(text, position, "}", "',' or '}'")
    if not found:
        raise json.JSONDecodeError("the object has no 'sections' array", text, start)
    return position + 1


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_DECODER = json.JSONDecoder()


def _skip_space(text: str, position: int) -> int:
    """The offset of the next non-whitespace character (JSON's own idea of whitespace)."""
    return _JSON_SPACE.match(text, position).end()


def _expect(text: str, position: int, token: str, wanted: str) -> None:
    """Fail the way json itself does, so every syntax error carries its line."""
    if not text.startswith(token, position):
        raise json.JSONDecodeError(f"expected {wanted}", text, position)


def _decode_at(text: str, position: int) -> tuple[object, int]:
    """Decode one JSON value, turning every way that can fail into a JSONDecodeError with a line."""
    try:
        return _JSON_DECODER.raw_decode(text, position)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as error:
        raise json.JSONDecodeError(_json_limit(error), text, position) from None


def _json_limit(error: Exception) -> str:
    """Explain the failures that are limits of Python's decoder rather than JSON syntax errors."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error)  # e.g. an integer longer than Python's int_max_str_digits


def _section_from_json(value: object, name: str, line: int) -> Section | SourceProblem:
    if not isinstance(value, dict):
        return SourceProblem(name, line, f"expected a JSON object, got {_json_type(value)}")
    return _section_from_record(value, name, line)


def _read_csv(source: _Input, file: BinaryIO) -> Iterator[Section | SourceProblem]:
    """A CSV file with a header naming id, title and content; other columns become metadata.

    Lines are physical lines, so a record with a multi-line quoted field is reported at the line
    it starts on. A malformed quote stops the file: nothing after it can be trusted.
    """
    rows = csv.reader(_lines(file), strict=True)
    starts_at = 1
    try:
        header = [column.strip() for column in next(rows, [])]
        if problem := _check_header(header, source.name):
            yield problem
            return
        starts_at = rows.line_num + 1
        for row in rows:
            if row:
                yield _section_from_row(header, row, source.name, starts_at)
            starts_at = rows.line_num + 1
    except csv.Error as error:
        yield SourceProblem(source.name, starts_at, f"malformed CSV: {error}")


def _check_header(header: list[str], name: str) -> SourceProblem | None:
    if not any(header):
        return SourceProblem(name, 1, "missing header row (expected columns id, title, content)")
    missing = [column for column in _CSV_COLUMNS if column not in header]
    if missing:
        return SourceProblem(name, 1, f"missing required column(s): {', '.join(missing)}")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        return SourceProblem(name, 1, f"repeated column(s): {', '.join(repeated)}")
    return None


def _section_from_row(header: list[str], row: list[str], name: str, line: int) -> Section | SourceProblem:
    values = dict(zip(header, row))
    if len(row) != len(header):
        section_id = values.get("id", "")
        who = f"section {section_id!r}: " if section_id.strip() else ""
        return SourceProblem(name, line, f"{who}expected {len(header)} fields, got {len(row)}")
    record = {column: values.pop(column) for column in _CSV_COLUMNS}
    record["metadata"] = values
    return _section_from_record(record, name, line)


def _section_from_record(record: dict, name: str, line: int) -> Section | SourceProblem:
    """Check one record's fields and build its Section.

    Everything wrong with a record goes into one message, so one round of fixes is enough. Keys
    other than id, title, content and metadata become metadata; `metadata` wins over them.
    """
    raw_id, title, content, metadata = (record.get(key, _ABSENT) for key in _RECORD_FIELDS)
    section_id = _as_id(raw_id)
    issues = []
    if raw_id is _ABSENT:
        issues.append("missing 'id'")
    elif section_id is None:
        issues.append(f"'id' must be a string, got {_json_type(raw_id)}")
    elif not section_id.strip():
        issues.append("'id' is blank")
    if content is _ABSENT:
        issues.append("missing 'content'")
    elif not isinstance(content, str):
        issues.append(f"'content' must be a string, got {_json_type(content)}")
    elif not content.strip():
        issues.append("'content' is blank")
    if title not in (_ABSENT, None) and not isinstance(title, str):
        issues.append(f"'title' must be a string, got {_json_type(title)}")
    if metadata not in (_ABSENT, None) and not isinstance(metadata, dict):
        issues.append(f"'metadata' must be an object, got {_json_type(metadata)}")
    if issues:
        who = f"section {section_id!r}: " if section_id and section_id.strip() else ""
        return SourceProblem(name, line, who + "; ".join(issues))
    extra = {key: value for key, value in record.items() if key not in _RECORD_FIELDS}
    if isinstance(metadata, dict):
        extra.update(metadata)
    title = title if isinstance(title, str) else ""
    return Section(section_id, title, content, extra, f"{name}:{line}")


def _as_id(value: object) -> str | None:
    """The id as a string: strings as they are, JSON numbers converted, anything else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(value)
    return None


# --- documents (Markdown, MDX, reST, text) -----------------------------------------------------

_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\r?\n)+")
_RST_ADORNMENT = re.compile(r"([!-/:-@\[-`{-~])\1+[ \t]*$")  # one punctuation character, repeated
_DOCUMENT_KEYS = ("source", "headings", "line")


def _read_markdown(source: _Input, file: BinaryIO) -> Iterator[Section | SourceProblem | _Skipped]:
    """Markdown and MDX, by sections.reading.markdown: one section per heading that has text under it.

    Ids are the file's relative path + '#' + the heading path (`guide.md#install/linux`); the text
    before the first heading is the relative path alone, titled by the front matter's title or the
    file stem. Invalid front matter is a problem of the file, which is then not read.
    """
    text = "".join(_lines(file))
    try:
        document = read_markdown(text, title=Path(source.rel).stem, mdx=source.kind == "mdx")
    except DocumentError as error:
        yield SourceProblem(source.name, error.line, error.message)
        return
    yield from _document_sections(source, document)


def _read_rst(source: _Input, file: BinaryIO) -> Iterator[Section | _Skipped]:
    """reStructuredText: one section per section title (a line underlined, or over- and underlined,
    by one repeated punctuation character at least as long as the title). Levels follow the order
    in which adornment styles first appear, as in docutils; the text is kept as written."""
    lines = "".join(_lines(file)).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    styles: list[tuple[str, bool]] = []
    titles: list[tuple[int, int, int, str]] = []  # first line, line after, level, title
    index = 0
    while index < len(lines):
        found = _rst_title(lines, index)
        if found is None:
            index += 1
            continue
        style, title, after = found
        if style not in styles:
            styles.append(style)
        titles.append((index, after, styles.index(style) + 1, title))
        index = after
    ends = [start for start, _, _, _ in titles] + [len(lines)]
    parts = [_plain_part(lines, 0, Path(source.rel).stem, 0, ends[0])]
    parts += [_plain_part(lines, level, title, start, end, body)
              for (start, body, level, title), end in zip(titles, ends[1:])]
    yield from _document_sections(source, build_sections(parts, Document({})))


def _rst_title(lines: list[str], index: int) -> tuple[tuple[str, bool], str, int] | None:
    """((adornment character, overlined), title, line after it) for a title starting at `index`."""
    if index and lines[index - 1].strip():
        return None  # a title follows a blank line (or starts the file)
    over = _RST_ADORNMENT.match(lines[index])
    if over and index + 2 < len(lines):
        title, under = lines[index + 1].strip(), _RST_ADORNMENT.match(lines[index + 2])
        if title and under and under[1] == over[1] and len(lines[index + 2].rstrip()) >= len(title):
            return (over[1], True), title, index + 3
    if over or index + 1 >= len(lines) or not lines[index].strip() or lines[index][0].isspace():
        return None
    under = _RST_ADORNMENT.match(lines[index + 1])
    title = lines[index].rstrip()
    if under and len(lines[index + 1].rstrip()) >= len(title):
        return (under[1], False), title, index + 2
    return None


def _plain_part(lines: list[str], level: int, title: str, start: int, end: int, body: int | None = None) -> Part:
    """A part whose text is kept as written: lines[body:end] (body defaults to start)."""
    chunk = lines[start if body is None else body:end]
    content = _LEADING_BLANK_LINES.sub("", "\n".join(chunk)).rstrip()
    first = next((n for n in range(start, end) if lines[n].strip()), start)
    return Part(level, title, None, (start if level else first) + 1, content, bool(content))


def _read_text(source: _Input, file: BinaryIO) -> Iterator[Section]:
    """The whole file is one section, id'd by its relative path and titled by its stem."""
    content = _LEADING_BLANK_LINES.sub("", "".join(_lines(file))).rstrip()
    if content:
        yield _document_section(source, source.rel, Path(source.rel).stem, content, 1, (), {})


def _document_sections(source: _Input, document: Document) -> Iterator[Section | _Skipped]:
    """The sections (and skips) of a document read by sections.reading.markdown's rules, as records."""
    for section in document.sections:
        section_id = f"{source.rel}#{section.path}" if section.path else source.rel
        yield _document_section(source, section_id, breadcrumb(section.title, section.headings, document.metadata),
                                section.content, section.line, section.headings, document.metadata)
    for skip in document.skipped:
        yield _Skipped(skip.reason)


BREADCRUMB = " > "


def breadcrumb(title: str, headings: Sequence[str], front_matter: dict) -> str:
    """A section's title is where it sits: the document's title and the headings above it
    (`KSampler > Inputs`). A thousand pages each with an "Inputs" section then say which page each
    one is, in search results and in the text that is embedded (measured with `python -m bench
    retrieval`: with bare heading titles, chunking took top-3 from 0.73 to 0.65; with these titles
    it is 0.73 again, top-1 0.47 as before)."""
    crumbs = list(headings) or [title]
    page = front_matter.get("title")
    if isinstance(page, str) and page.strip() and crumbs[0] != page:
        crumbs.insert(0, page)
    return BREADCRUMB.join(crumb for crumb in crumbs if crumb)


def _document_section(source: _Input, section_id: str, title: str, content: str, line: int,
                      headings: Iterable[str], front_matter: dict) -> Section:
    """A section read from a document file: where it came from, and the front matter's fields."""
    metadata = {key: value for key, value in front_matter.items() if key not in _DOCUMENT_KEYS}
    metadata.update(source=source.rel, headings=list(headings), line=line)
    return Section(section_id, title, content, metadata, f"{source.name}:{line}", from_document=True)


_READERS = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "markdown": _read_markdown,
    "mdx": _read_markdown,
    "rst": _read_rst,
    "text": _read_text,
}
