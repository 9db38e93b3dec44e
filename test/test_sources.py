"""Tests for sections.reading.sources: every input format, and every kind of bad input named by file:line."""
import io
import json
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sections.reading import sources
from sections.reading.sources import Section, SectionSource, SourceError, SourceProblem, open_sources

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "docs")


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode(encoding))
    return path


def jsonl(*records):
    return "".join(json.dumps(record) + "\n" for record in records)


def problems_of(paths, **kwargs):
    with pytest.raises(SourceError) as caught:
        open_sources(paths, **kwargs)
    return [str(problem) for problem in caught.value.problems]


def by_id(source):
    return {section.id: section for section in source}


# --- formats ----------------------------------------------------------------------------------


def test_jsonl_with_title_metadata_extra_keys_and_blank_lines(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl(
        {"id": "a", "title": "A", "content": "alpha", "metadata": {"lang": "en"}, "url": "u"},
    ) + "\n   \n" + jsonl({"id": 7, "content": "seven"}))
    source = open_sources([path])
    assert isinstance(source, SectionSource)
    assert source.count == 2 and source.problems == []
    a, seven = list(source)
    assert a == Section("a", "A", "alpha", {"lang": "en", "url": "u"})
    assert a.location == f"{path}:1"
    assert seven == Section("7", "", "seven", {})
    assert seven.location == f"{path}:4"


def test_ndjson_extension_and_metadata_wins_over_extra_keys(tmp_path):
    path = write(tmp_path / "a.ndjson", jsonl({"id": "a", "content": "x", "k": 1, "metadata": {"k": 2}}))
    [section] = open_sources([path])
    assert section.metadata == {"k": 2}


def test_json_array_and_line_numbers(tmp_path):
    text = '[\n  {"id": "a", "content": "x"},\n\n  {\n    "id": "b",\n    "content": 5\n  }\n]\n'
    path = write(tmp_path / "a.json", text)
    assert problems_of([path]) == [f"{path}:4: section 'b': 'content' must be a string, got number"]
    write(path, text.replace("5", '"five"'))
    sections = list(open_sources([path]))
    assert [(s.id, s.content, s.location) for s in sections] == [
        ("a", "x", f"{path}:2"), ("b", "five", f"{path}:4")]


def test_json_object_with_sections_array(tmp_path):
    path = write(tmp_path / "a.json", json.dumps(
        {"version": 1, "sections": [{"id": "a", "content": "x"}], "more": {"sections": 3}}, indent=2))
    assert [s.id for s in open_sources([path])] == ["a"]
    write(path, '{"version": 1}')
    assert problems_of([path]) == [f"{path}:1: malformed JSON: the object has no 'sections' array at column 1"]
    write(path, '{"sections": [{"id": "a", "content": "x"}],\n}')
    assert problems_of([path]) == [f"{path}:2: malformed JSON: expected a property name in double quotes at column 1"]


def test_empty_json_array_is_valid(tmp_path):
    assert open_sources([write(tmp_path / "a.json", " [ ] ")]).count == 0


def test_csv_with_metadata_columns_and_multiline_field(tmp_path):
    path = write(tmp_path / "a.csv",
                 'id,title,content,lang\n'
                 'a,,"first line\nsecond, line",en\n'
                 '\n'
                 'b,"B ""quoted""",beta,\n')
    a, b = open_sources([path])
    assert a == Section("a", "", "first line\nsecond, line", {"lang": "en"})
    assert a.location == f"{path}:2"
    assert b == Section("b", 'B "quoted"', "beta", {"lang": ""})
    assert b.location == f"{path}:5"


def test_csv_with_byte_order_mark_and_crlf(tmp_path):
    path = write(tmp_path / "a.csv", b"\xef\xbb\xbfid,title,content\r\na,T,x\r\n")
    assert list(open_sources([path])) == [Section("a", "T", "x", {})]


MARKDOWN = """\
Intro text before any heading.

# Guide

Welcome.

```python
# not a heading
x = 1
```

## Setup
Install it.
## Setup
Again.
### Empty

## Setup ##
Third.
~~~
## still code
~~~~
# Café & Crème!
Fin.
"""


def test_markdown_folder(tmp_path):
    docs = tmp_path / "docs"
    write(docs / "guide.md", MARKDOWN)
    write(docs / "nested" / "deeper" / "note.markdown", "# Note\nbody\n")
    write(docs / "nested" / "plain.txt", "\n\nplain text\n\n")
    write(docs / "nested" / "other.rst", "Title\n=====\n\nrst body\n")
    write(docs / "blank.txt", "  \n")
    write(docs / "image.png", b"\x89PNG\xff")
    write(docs / ".hidden.md", "# Hidden\nx\n")
    write(docs / ".git" / "notes.md", "# Git\nx\n")
    source = open_sources([docs])
    sections = by_id(source)
    assert list(sections) == [
        "guide.md", "guide.md#guide", "guide.md#guide/setup", "guide.md#guide/setup-2", "guide.md#guide/setup-3",
        "guide.md#café-crème",  # a folder's files come before its subfolders
        "nested/other.rst#title", "nested/plain.txt", "nested/deeper/note.markdown#note",
    ]
    assert sections["guide.md"] == Section("guide.md", "guide", "Intro text before any heading.",
                                           {"source": "guide.md", "headings": [], "line": 1})
    guide = sections["guide.md#guide"]
    assert guide.title == "Guide" and guide.location == f"{docs / 'guide.md'}:3"
    assert guide.content == "Welcome.\n\n```python\n# not a heading\nx = 1\n```"
    assert guide.metadata == {"source": "guide.md", "headings": ["Guide"], "line": 3}
    assert sections["guide.md#guide/setup-2"].content == "Again."  # its "### Empty" child holds nothing
    setup = sections["guide.md#guide/setup-3"]
    assert setup.title == "Guide > Setup" and setup.metadata["headings"] == ["Guide", "Setup"]  # a breadcrumb
    assert setup.content == "Third.\n~~~\n## still code\n~~~~"
    assert sections["guide.md#café-crème"].title == "Café & Crème!"
    assert sections["nested/plain.txt"] == Section(
        "nested/plain.txt", "plain", "plain text", {"source": "nested/plain.txt", "headings": [], "line": 1})
    assert sections["nested/other.rst#title"].content == "rst body"
    assert sections["nested/deeper/note.markdown#note"].metadata["source"] == "nested/deeper/note.markdown"
    assert all(section.from_document for section in sections.values())
    assert source.unread == {".png": 1} and source.unread_paths == [str(docs / "image.png")]
    assert source.skipped == {}


def test_markdown_file_given_directly_and_slug_collisions(tmp_path):
    path = write(tmp_path / "sub" / "notes.md", "# A\none\n# A 2\ntwo\n# A\nthree\n# !!!\nfour\n")
    assert [s.id for s in open_sources([path])] == [
        "notes.md#a", "notes.md#a-2", "notes.md#a-3", "notes.md#section"]


def test_mdx_is_read_in_folders_and_when_named(tmp_path):
    text = "---\ntitle: Intro\n---\nimport Tabs from '@theme/Tabs';\n\nHello <b>there</b>.\n\n## Next\nMore.\n"
    path = write(tmp_path / "docs" / "intro.mdx", text)
    from_folder = list(open_sources([tmp_path / "docs"]))
    named = list(open_sources([path]))
    assert from_folder == named == [
        Section("intro.mdx", "Intro", "Hello there.", {"title": "Intro", "source": "intro.mdx", "headings": [],
                                                       "line": 6}),
        Section("intro.mdx#next", "Intro > Next", "More.", {"title": "Intro", "source": "intro.mdx",
                                                     "headings": ["Next"], "line": 8}),
    ]
    assert named[1].location == f"{path}:8"


def test_front_matter_is_merged_into_metadata_but_never_overrides_the_reader_keys(tmp_path):
    path = write(tmp_path / "a.md", "---\ntitle: A\nsource: elsewhere\nline: 99\nheadings: [x]\ntags: [t]\n"
                                    "date: 2024-01-02\n---\n# H\nText.\n")
    [section] = open_sources([path])
    assert section.metadata == {"title": "A", "tags": ["t"], "date": "2024-01-02",
                                "source": "a.md", "headings": ["H"], "line": 9}


def test_invalid_front_matter_is_a_problem_with_file_and_line(tmp_path):
    bad_yaml = write(tmp_path / "a.md", "---\ntitle: ok\nlist: [unclosed\n---\n# A\nx\n")
    bad_toml = write(tmp_path / "b.mdx", "+++\ntitle = \"ok\"\nbroken = = 1\n+++\nx\n")
    good = write(tmp_path / "c.md", "# C\nfine\n")
    problems = problems_of([bad_yaml, bad_toml, good])
    assert problems[0].startswith(f"{bad_yaml}:3: invalid YAML front matter: ")
    assert problems[1].startswith(f"{bad_toml}:3: invalid TOML front matter: ")
    assert len(problems) == 2
    source = open_sources([bad_yaml, bad_toml, good], skip_invalid=True)
    assert [s.id for s in source] == ["c.md#c"] and source.problem_count == 2


def test_sections_without_text_are_counted_as_skipped(tmp_path):
    write(tmp_path / "api.md", "# API\n\nIntro.\n\n## Cls\n\n::: pkg.Cls\n\n## Empty\n\n## Logo\n\n<img src=x.png>\n")
    write(tmp_path / "b.mdx", "import X from 'x'\n\n# B\n\n<X />\n")
    source = open_sources([tmp_path])
    assert [s.id for s in source] == ["api.md#api"]
    assert source.count == 1 and source.skipped == {"no text after cleaning": 3}
    assert source.problems == []


def test_unread_files_are_counted_by_extension_and_listed(tmp_path, monkeypatch):
    for name in ("a.png", "b.PNG", "c.png", "mkdocs.yml", "Makefile", "docs/d.svg", ".hidden.png"):
        write(tmp_path / name, "x")
    write(tmp_path / "doc.md", "# Doc\ntext\n")
    monkeypatch.setattr(sources, "MAX_KEPT_UNREAD", 4)
    source = open_sources([tmp_path])
    assert source.unread == {".png": 3, ".yml": 1, "": 1, ".svg": 1}
    assert source.unread_paths == [str(tmp_path / name) for name in ("Makefile", "a.png", "b.PNG", "c.png")]
    assert open_sources([tmp_path / "doc.md"]).unread == {}


def test_from_document_only_for_document_files(tmp_path):
    write(tmp_path / "a.jsonl", jsonl({"id": "j", "content": "x"}))
    write(tmp_path / "b.csv", "id,title,content\nc,,x\n")
    write(tmp_path / "c.json", '[{"id": "k", "content": "x"}]')
    for name in ("d.md", "e.mdx", "f.txt", "g.rst"):
        write(tmp_path / name, "Some text.\n")
    flags = {s.id: s.from_document for s in open_sources([tmp_path])}
    assert flags == {"j": False, "c": False, "k": False,
                     "d.md": True, "e.mdx": True, "f.txt": True, "g.rst": True}


def test_rst_titles_are_sections(tmp_path):
    path = write(tmp_path / "usage.rst", "Intro.\n\n=====\nUsage\n=====\n\nHow.\n\nInstall\n=======\n\n"
                                         "Run::\n\n    pip install x\n    =============\n\nToo short\n===\n\nBody.\n\n"
                                         "Quick start\n-----------\nGo.\n\nLater\n=======\nEnd.\n")
    sections = list(open_sources([path]))
    assert [(s.id, s.title, s.metadata["line"]) for s in sections] == [
        ("usage.rst", "usage", 1), ("usage.rst#usage", "Usage", 3), ("usage.rst#usage/install", "Usage > Install", 9),
        ("usage.rst#usage/install/quick-start", "Usage > Install > Quick start", 22),
        ("usage.rst#usage/later", "Usage > Later", 26)]
    assert sections[2].content == "Run::\n\n    pip install x\n    =============\n\nToo short\n===\n\nBody."
    assert sections[3].metadata["headings"] == ["Usage", "Install", "Quick start"]


def test_the_fixture_folders(tmp_path):
    source = open_sources([FIXTURES])
    ids = [s.id for s in source]
    assert len(ids) == len(set(ids)) == source.count
    assert source.problems == [] and source.skipped == {"no text after cleaning": 3}
    assert source.unread == {".yml": 1, ".css": 1, ".svg": 1}
    assert {"mkdocs/docs/index.md", "mkdocs/docs/index.md#install", "mkdocs/docs/index.md#install/checking-the-install",
            "docusaurus/docs/intro.mdx#getting-started", "supabase/guides/auth/passwords.mdx",
            "hugo/content/posts/release-notes.md#2-0/new-features",
            "hugo/content/posts/release-notes.md#1-0/new-features", "sphinx/usage.rst#usage/configuration/options",
            "long/handbook.md#operations-handbook/backups/notes-2"} <= set(ids)
    sections = by_id(source)
    index = sections["mkdocs/docs/index.md"]
    assert index.title == "Widgets" and index.metadata["hide"] == ["navigation", "toc"]
    assert index.location == f"{os.path.join(FIXTURES, 'mkdocs', 'docs', 'index.md')}:9"
    hugo = sections["hugo/content/posts/release-notes.md#1-0/new-features"]
    assert hugo.metadata == {"title": "Release notes", "date": "2024-03-01T10:00:00+00:00", "draft": False,
                             "weight": 10, "params": {"author": "The Widgets team"},
                             "source": "hugo/content/posts/release-notes.md", "headings": ["1.0", "New features"],
                             "line": 24}


def test_ids_stay_when_a_heading_is_inserted_and_a_sentence_edited(tmp_path):
    text = "Intro.\n\n# Install\n\nPip.\n\n## Linux\n\nApt.\n\n# Use\n\nRun it.\n\n## Options\n\nFast.\n"
    path = write(tmp_path / "guide.md", text)
    before = {s.id for s in open_sources([path])}
    write(path, text.replace("# Use\n", "# Upgrade\n\nIn place.\n\n# Use\n").replace("Apt.", "Apt or dnf."))
    after = {s.id: s for s in open_sources([path])}
    assert set(after) == before | {"guide.md#upgrade"}
    assert after["guide.md#install/linux"].content == "Apt or dnf."


def test_ids_and_order_are_stable_across_reads(tmp_path):
    write(tmp_path / "docs" / "b.md", MARKDOWN)
    write(tmp_path / "docs" / "a" / "x.md", MARKDOWN)
    write(tmp_path / "docs" / "c.jsonl", jsonl({"id": "c", "content": "x"}))
    first = open_sources([tmp_path / "docs"])
    again = open_sources([tmp_path / "docs"])
    assert list(first) == list(first) == list(again)
    assert first.count == len(list(first)) == 13


def test_stdin_is_jsonl_and_can_be_read_twice(tmp_path):
    other = write(tmp_path / "a.jsonl", jsonl({"id": "a", "content": "x"}))
    source = open_sources([other, "-"], stdin=io.StringIO(jsonl({"id": "s", "content": "from stdin"})))
    assert [s.id for s in source] == [s.id for s in source] == ["a", "s"]
    assert list(source)[1].location == "<stdin>:1"


def test_stdin_bytes_are_checked_as_utf8(tmp_path):
    stdin = io.TextIOWrapper(io.BytesIO(b'{"id": "a", "content": "x"}\n{"id": "b", "content": "\xff"}\n'))
    assert problems_of(["-"], stdin=stdin) == [
        "<stdin>:2: not valid UTF-8: byte 0xff at byte 25 of the line"]


def test_stdin_copy_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    source = open_sources(["-"], stdin=io.StringIO(jsonl({"id": "a", "content": "x"})))
    assert len(list(tmp_path.iterdir())) == 1
    del source
    assert list(tmp_path.iterdir()) == []
    problems_of(["-"], stdin=io.StringIO("{"))
    assert list(tmp_path.iterdir()) == []


def test_empty_folder_and_no_paths(tmp_path):
    assert open_sources([tmp_path]).count == 0
    assert open_sources([]).count == 0


def test_a_single_path_instead_of_a_list_is_a_type_error(tmp_path):
    with pytest.raises(TypeError):
        open_sources(str(tmp_path))


# --- bad input --------------------------------------------------------------------------------


def test_malformed_json_line(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl({"id": "a", "content": "x"}) + '{"id": "b", content: 1}\n[1]\n')
    assert problems_of([path]) == [
        f"{path}:2: malformed JSON: Expecting property name enclosed in double quotes at column 13",
        f"{path}:3: expected a JSON object, got array",
    ]


def test_malformed_json_document_reports_the_line_of_the_error(tmp_path):
    path = write(tmp_path / "a.json", '[\n {"id": "a", "content": "x"},\n {"id": "b" "content": "y"}\n]')
    assert problems_of([path]) == [f"{path}:3: malformed JSON: Expecting ',' delimiter at column 13"]
    write(path, '[{"id": "a", "content": "x"}]\n\nextra')
    assert problems_of([path]) == [f"{path}:3: malformed JSON: extra data after the end of the document at column 1"]
    write(path, "")
    assert problems_of([path]) == [
        f"{path}:1: malformed JSON: expected an array of sections or an object with a 'sections' array at column 1"]


def test_json_beyond_python_limits_is_a_problem_not_a_crash(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = write(tmp_path / "a.jsonl", deep + "\n" + '{"id": ' + "9" * 5000 + ', "content": "x"}\n')
    problems = problems_of([path])
    assert problems[0] == f"{path}:1: malformed JSON: nested too deeply"
    assert problems[1].startswith(f"{path}:2: malformed JSON: Exceeds the limit")
    path = write(tmp_path / "a.json", "[\n" + deep + "]")
    assert problems_of([path]) == [f"{path}:2: malformed JSON: nested too deeply at column 1"]


def test_missing_id_missing_content_blank_content_wrong_types(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl(
        {"content": "no id"},
        {"id": "b"},
        {"id": "c", "content": " \n\t"},
        {"id": "d", "content": ["x"]},
        {"id": "  ", "content": "x"},
        {"id": True, "content": "x"},
        {"id": None, "content": None},
        {"id": "h", "content": "x", "title": 3, "metadata": []},
        {"id": "i", "content": "x", "title": None, "metadata": None},
    ))
    assert problems_of([path]) == [
        f"{path}:1: missing 'id'",
        f"{path}:2: section 'b': missing 'content'",
        f"{path}:3: section 'c': 'content' is blank",
        f"{path}:4: section 'd': 'content' must be a string, got array",
        f"{path}:5: 'id' is blank",
        f"{path}:6: 'id' must be a string, got boolean",
        f"{path}:7: 'id' must be a string, got null; 'content' must be a string, got null",
        f"{path}:8: section 'h': 'title' must be a string, got number; "
        "'metadata' must be an object, got array",
    ]


def test_duplicate_ids_within_and_across_files(tmp_path):
    a = write(tmp_path / "a.jsonl", jsonl({"id": "x", "content": "1"}, {"id": "y", "content": "2"},
                                          {"id": "x", "content": "3"}))
    b = write(tmp_path / "b.csv", "id,title,content\ny,,4\n")
    c = write(tmp_path / "c.json", '[{"id": 5, "content": "5"}]')
    d = write(tmp_path / "d.jsonl", jsonl({"id": "5", "content": "five"}))
    assert problems_of([a, b, c, d]) == [
        f"{a}:3: duplicate id 'x' (first seen at {a}:1)",
        f"{b}:2: duplicate id 'y' (first seen at {a}:2)",
        f"{d}:1: duplicate id '5' (first seen at {c}:1)",
    ]


def test_duplicate_markdown_ids_from_two_folders(tmp_path):
    write(tmp_path / "one" / "README.md", "# Intro\nx\n")
    write(tmp_path / "two" / "README.md", "# Intro\ny\n")
    assert problems_of([tmp_path / "one", tmp_path / "two"]) == [
        f"{tmp_path / 'two' / 'README.md'}:1: duplicate id 'README.md#intro' "
        f"(first seen at {tmp_path / 'one' / 'README.md'}:1)"]


def test_bad_utf8_bytes(tmp_path):
    lines = jsonl({"id": "a", "content": "x"}).encode() + b'{"id": "b", "content": "caf\xe9"}\n'
    good = jsonl({"id": "c", "content": "x"}).encode()
    path = write(tmp_path / "a.jsonl", lines + good)
    assert problems_of([path]) == [f"{path}:2: not valid UTF-8: byte 0xe9 at byte 28 of the line"]
    for name in ("a.csv", "a.md", "a.mdx", "a.txt", "a.rst", "a.json"):
        path = write(tmp_path / name, b"id,title,content\n\n" + b"caf\xe9\n")
        assert problems_of([path]) == [f"{path}:3: not valid UTF-8: byte 0xe9 at byte 4 of the line"]


def test_csv_missing_column_and_wrong_field_count(tmp_path):
    path = write(tmp_path / "a.csv", "id,content,lang\na,x,en\n")
    assert problems_of([path]) == [f"{path}:1: missing required column(s): title"]
    write(path, "id,title,content\na,,x\nb,,\"two\nlines\",extra\nc,only\n,,\n")
    assert problems_of([path]) == [
        f"{path}:3: section 'b': expected 3 fields, got 4",
        f"{path}:5: section 'c': expected 3 fields, got 2",
        f"{path}:6: 'id' is blank; 'content' is blank",
    ]
    write(path, "")
    assert problems_of([path]) == [f"{path}:1: missing header row (expected columns id, title, content)"]
    write(path, "id,title,content,id\n")
    assert problems_of([path]) == [f"{path}:1: repeated column(s): id"]


def test_csv_malformed_quote(tmp_path):
    path = write(tmp_path / "a.csv", 'id,title,content\na,,x\nb,,"unterminated\n\n')
    assert problems_of([path]) == [f"{path}:3: malformed CSV: unexpected end of data"]
    write(path, 'id,title,content\na,,"x"y\nb,,z\n')
    assert problems_of([path]) == [f"{path}:2: malformed CSV: ',' expected after '\"'"]


def test_nonexistent_path_is_always_an_error(tmp_path):
    good = write(tmp_path / "a.jsonl", jsonl({"id": "a", "content": "x"}))
    missing = tmp_path / "nope.jsonl"
    for skip_invalid in (False, True):
        assert problems_of([good, missing], skip_invalid=skip_invalid) == [
            f"{missing}: no such file or directory"]


def test_unsupported_file_given_directly(tmp_path):
    path = write(tmp_path / "a.xml", "<a/>")
    [problem] = problems_of([path])
    assert problem.startswith(f"{path}: unsupported file type (expected .jsonl, .ndjson, .json")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions")
def test_unreadable_file(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl({"id": "a", "content": "x"}))
    path.chmod(0)
    assert problems_of([path]) == [f"{path}: cannot read: Permission denied"]


# --- skip_invalid and the message -------------------------------------------------------------


def test_skip_invalid_leaves_out_bad_records_and_later_duplicates(tmp_path):
    a = write(tmp_path / "a.jsonl", jsonl(
        {"id": "x", "content": "1"},
        {"id": "bad"},
        {"id": "x", "content": "2"},
        {"id": "bad", "content": "now valid"},
    ))
    b = write(tmp_path / "b.csv", "id,title,content\nx,,3\ny,,4\n")
    source = open_sources([a, b], skip_invalid=True)
    assert [(s.id, s.content) for s in source] == [("x", "1"), ("bad", "now valid"), ("y", "4")]
    assert source.count == 3
    assert [str(p) for p in source.problems] == [
        f"{a}:2: section 'bad': missing 'content'",
        f"{a}:3: duplicate id 'x' (first seen at {a}:1)",
        f"{b}:2: duplicate id 'x' (first seen at {a}:1)",
    ]
    assert source.problems[0] == SourceProblem(str(a), 2, "section 'bad': missing 'content'")


def test_iterating_after_the_input_changed_raises(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl({"id": "a", "content": "x"}))
    source = open_sources([path])
    write(path, jsonl({"id": "a", "content": " "}))
    with pytest.raises(SourceError, match="changed after it was validated"):
        list(source)
    path.unlink()
    with pytest.raises(SourceError) as caught:
        list(source)
    assert str(caught.value) == (
        f"{path}: cannot read: No such file or directory (the input changed after it was validated)")


def test_message_lists_first_20_problems(tmp_path):
    path = write(tmp_path / "a.jsonl", "".join(jsonl({"id": f"s{i}"}) for i in range(1500)))
    with pytest.raises(SourceError) as caught:
        open_sources([path])
    error = caught.value
    lines = str(error).splitlines()
    assert len(lines) == 21
    assert lines[0] == f"{path}:1: section 's0': missing 'content'"
    assert lines[19].startswith(f"{path}:20: ")
    assert lines[20] == "... and 1480 more"
    assert len(error.problems) == 1000 and error.problem_count == 1500
    assert isinstance(error, ValueError)


def test_problem_str_without_line():
    assert str(SourceProblem("a.csv", None, "boom")) == "a.csv: boom"
    assert str(SourceProblem("a.csv", 3, "boom")) == "a.csv:3: boom"
    assert str(SourceError([SourceProblem("a.csv", 3, "boom")])) == "a.csv:3: boom"


# --- nothing but SourceError, whatever the bytes ----------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["id", "title", "content", "metadata", "x"]) | st.text(max_size=4),
                      children, max_size=5),
    max_leaves=12,
)
EXTENSIONS = [".jsonl", ".json", ".csv", ".md", ".mdx", ".txt", ".rst"]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_everything(paths, skip_invalid):
    try:
        source = open_sources(paths, skip_invalid=skip_invalid)
    except SourceError as error:
        assert error.problems
        return
    sections = list(source)
    assert len(sections) == source.count
    assert all(isinstance(s.id, str) and s.id.strip() and isinstance(s.content, str) for s in sections)


@FAST
@given(data=st.binary(max_size=300), extension=st.sampled_from(EXTENSIONS), skip_invalid=st.booleans())
def test_random_bytes_only_ever_raise_source_error(tmp_path, data, extension, skip_invalid):
    read_everything([write(tmp_path / f"random{extension}", data)], skip_invalid)


@FAST
@given(value=json_values, skip_invalid=st.booleans())
def test_random_json_only_ever_raises_source_error(tmp_path, value, skip_invalid):
    text = json.dumps(value)
    paths = [write(tmp_path / "r.json", text),
             write(tmp_path / "r.jsonl", text + "\n" + json.dumps(value, indent=1) + "\n"),
             write(tmp_path / "s.json", json.dumps({"sections": value}))]
    read_everything(paths, skip_invalid)


@FAST
@given(text=st.text(alphabet=string.printable + "#`~é\x00\u2028", max_size=200),
       extension=st.sampled_from(EXTENSIONS))
def test_random_text_only_ever_raises_source_error(tmp_path, text, extension):
    read_everything([write(tmp_path / f"random{extension}", text)], skip_invalid=False)
