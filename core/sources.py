"""Read document sections from files, folders and stdin, validated before anything is spent.

Callers pay for every section they embed, so nothing is handed on until every input has been
checked. `open_sources` makes a first pass over all inputs that keeps only the ids seen (and where
each was first seen), never the sections; the `SectionSource` it returns streams the sections in a
second pass. Memory therefore stays flat however large the inputs are; the one exception is a
`.json` document, which is parsed whole (JSONL is the format for huge inputs).

Formats: JSONL (`.jsonl`, `.ndjson`, and stdin), JSON (`.json`: an array of sections or an object
with a `sections` array), CSV (`.csv` with columns id, title, content; other columns become
metadata), Markdown (`.md`, `.markdown`: one section per ATX heading) and plain text (`.txt`,
`.rst`: one section per file). Folders are searched recursively, skipping hidden entries.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from core.records import Section, section_problem

__all__ = ["Section", "SectionSource", "SourceError", "SourceProblem", "open_sources"]

MAX_KEPT_PROBLEMS = 1000
"""Problems kept in memory; a garbage input can hold millions, so the rest are only counted."""

MAX_SHOWN_PROBLEMS = 20
"""Problems listed in a SourceError's message; more would bury the first ones on a terminal."""

_KINDS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".rst": "text",
}
_STDIN_NAME = "<stdin>"
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
    sections in memory. Built by `open_sources`.
    """

    def __init__(
        self,
        inputs: list[_Input],
        *,
        count: int,
        problems: list[SourceProblem],
        problem_count: int,
        skip_invalid: bool,
    ):
        self.count = count
        self.problems = problems
        self.problem_count = problem_count
        self._inputs = inputs
        self._skip_invalid = skip_invalid

    def __iter__(self) -> Iterator[Section]:
        """Yield the valid sections; a problem here means an input changed since validation."""
        for item in _checked(self._inputs):
            if isinstance(item, Section):
                yield item
            elif not self._skip_invalid:
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
    inputs, found_while_listing = _list_inputs(names, stdin_copy)
    problems = _Problems()
    for problem in found_while_listing:
        problems.add(problem)
    count = 0
    for item in _checked(inputs):
        if isinstance(item, Section):
            count += 1
        else:
            problems.add(item)
    if problems.count and not skip_invalid:
        raise SourceError(problems.kept, problems.count)
    return SectionSource(inputs, count=count, problems=problems.kept,
                         problem_count=problems.count, skip_invalid=skip_invalid)


def _checked(inputs: list[_Input]) -> Iterator[Section | SourceProblem]:
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


def _read_all(inputs: list[_Input]) -> Iterator[Section | SourceProblem]:
    """Read each input with the reader for its kind, turning I/O and encoding failures into problems."""
    for source in inputs:
        try:
            with open(source.path, "rb") as file:
                yield from _READERS[source.kind](source, file)
        except _BadBytes as error:
            yield SourceProblem(source.name, error.line, error.message)
        except OSError as error:
            yield SourceProblem(source.name, None, f"cannot read: {error.strerror or error}")


# --- finding the files ------------------------------------------------------------------------


def _list_inputs(names: list[str], stdin_copy: str | None) -> tuple[list[_Input], list[SourceProblem]]:
    """Expand the paths the user gave into files, once, so both passes read the same list."""
    inputs: list[_Input] = []
    problems: list[SourceProblem] = []
    for name in names:
        if name == "-":
            inputs.append(_Input(_STDIN_NAME, stdin_copy, "jsonl", name))
        elif os.path.isdir(name):
            _walk(name, inputs, problems)
        elif kind := _KINDS.get(os.path.splitext(name)[1].lower()):
            inputs.append(_Input(name, name, kind, os.path.basename(name)))
        else:
            expected = ", ".join(_KINDS)
            problems.append(SourceProblem(name, None, f"unsupported file type (expected {expected})"))
    return inputs, problems


def _walk(root: str, inputs: list[_Input], problems: list[SourceProblem]) -> None:
    """Add the supported files under `root`, sorted so ids and order are the same on every run."""

    def report(error: OSError) -> None:
        problems.append(SourceProblem(error.filename or root, None, f"cannot read folder: {error.strerror}"))

    for folder, subfolders, files in os.walk(root, onerror=report):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            path = os.path.join(folder, name)
            kind = _KINDS.get(os.path.splitext(name)[1].lower())
            if kind and not name.startswith(".") and os.path.isfile(path):
                inputs.append(_Input(path, path, kind, Path(os.path.relpath(path, root)).as_posix()))


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
        yield SourceProblem(source.name, error.lineno, f"malformed JSON: {error.msg}")


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


# --- documents (Markdown, text) ---------------------------------------------------------------

_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_NOT_SLUG = re.compile(r"[\W_]+")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\r?\n)+")


def _read_markdown(source: _Input, file: BinaryIO) -> Iterator[Section]:
    """One section per ATX heading, holding the text up to the next heading of any level.

    Ids are the file's relative path + '#' + the heading's slug, numbered when a slug repeats, so
    they are the same on every run. Text before the first heading is a section titled by the file
    stem. Headings with no text under them are left out: they only structure the document.
    """
    used_slugs: set[str] = set()
    title, section_id, start, body = Path(source.rel).stem, source.rel, 1, []
    fence = ""
    for number, line in enumerate(_lines(file), 1):
        line = line.rstrip("\r\n")
        if fence:
            if _closes_fence(line, fence):
                fence = ""
        elif opening := _FENCE.match(line):
            fence = opening[1]
        elif heading := _HEADING.match(line):
            yield from _document_section(source, section_id, title, "\n".join(body), start)
            title = (heading[2] or "").strip()
            section_id = f"{source.rel}#{_unique_slug(title, used_slugs)}"
            start, body = number, []
            continue
        body.append(line)
    yield from _document_section(source, section_id, title, "\n".join(body), start)


def _closes_fence(line: str, fence: str) -> bool:
    """A fence closes with the same character, at least as long, and nothing after it."""
    closing = _FENCE.match(line)
    return bool(closing and closing[1][0] == fence[0] and len(closing[1]) >= len(fence)
                and not line[closing.end():].strip())


def _unique_slug(title: str, used: set[str]) -> str:
    """Lowercase letters, digits and hyphens; '-2', '-3'... for a slug already used in the file."""
    base = _NOT_SLUG.sub("-", title.lower()).strip("-") or "section"
    slug, number = base, 1
    while slug in used:
        number += 1
        slug = f"{base}-{number}"
    used.add(slug)
    return slug


def _read_text(source: _Input, file: BinaryIO) -> Iterator[Section]:
    """The whole file is one section, id'd by its relative path and titled by its stem."""
    text = "".join(_lines(file))
    yield from _document_section(source, source.rel, Path(source.rel).stem, text, 1)


def _document_section(
    source: _Input, section_id: str, title: str, text: str, line: int
) -> Iterator[Section]:
    """The section for a run of document text, without surrounding blank lines; none if blank."""
    content = _LEADING_BLANK_LINES.sub("", text).rstrip()
    if content:
        yield Section(section_id, title, content, {}, f"{source.name}:{line}")


_READERS = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "markdown": _read_markdown,
    "text": _read_text,
}
