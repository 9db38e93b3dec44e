"""Tests for sections.reading.markdown: front matter, headings and ids, MDX, markup cleaning, code kept as written.

Unit tests of `read_markdown` on small documents and on the realistic fixtures under
test/fixtures/docs/ (MkDocs, Docusaurus, Supabase-style MDX, Hugo, a long handbook).
"""
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sections.reading.markdown import NO_TEXT, Document, DocumentError, Skip, read_markdown, slug
from sections.reading.markup import strip_markup

FIXTURES = Path(__file__).parent / "fixtures" / "docs"


def read(text, mdx=False, title="doc"):
    return read_markdown(text, title=title, mdx=mdx)


def fixture(relative):
    path = FIXTURES / relative
    return read_markdown(path.read_text(encoding="utf-8"), title=path.stem, mdx=path.suffix == ".mdx")


def content_of(text, mdx=False):
    """The content of the one section `text` holds."""
    [section] = read(text, mdx=mdx).sections
    return section.content


def paths(document):
    return [section.path for section in document.sections]


def by_path(document):
    return {section.path: section for section in document.sections}


# --- rule 1: front matter ---------------------------------------------------------------------


def test_yaml_front_matter_is_metadata_and_titles_the_text_before_the_first_heading():
    document = read("---\ntitle: The Guide\nhide:\n  - toc\ndate: 2024-01-02\n---\nIntro.\n\n# Next\nBody.\n")
    assert document.metadata == {"title": "The Guide", "hide": ["toc"], "date": "2024-01-02"}
    intro, following = document.sections
    assert (intro.path, intro.title, intro.content, intro.line) == ("", "The Guide", "Intro.", 7)
    assert "title" not in intro.content and "---" not in intro.content
    assert (following.path, following.title, following.line) == ("next", "Next", 9)


def test_toml_front_matter():
    document = read('+++\ntitle = "Notes"\ndraft = true\n[params]\nauthor = "me"\n+++\n\nText.\n')
    assert document.metadata == {"title": "Notes", "draft": True, "params": {"author": "me"}}
    [section] = document.sections
    assert (section.title, section.content, section.line) == ("Notes", "Text.", 8)


def test_without_front_matter_title_is_the_default_and_a_non_string_title_is_ignored():
    assert read("Text.\n", title="stem").sections[0].title == "stem"
    document = read("---\ntitle: 42\n---\nText.\n", title="stem")
    assert document.metadata == {"title": 42} and document.sections[0].title == "stem"


def test_front_matter_only_at_the_very_top():
    document = read("Text.\n\n---\ntitle: x\n---\n")
    assert document.metadata == {}
    assert document.sections[0].content == "Text.\n\n---"  # a thematic break, then a setext heading
    assert paths(document) == [""]  # "title: x" is a heading with nothing under it
    assert read("\n---\ntitle: x\n---\nbody\n").metadata == {}


def test_an_unclosed_dashes_line_is_a_thematic_break_not_front_matter():
    document = read("---\nJust text.\n")
    assert document.metadata == {} and document.sections[0].content == "---\nJust text."


def test_empty_front_matter_and_dates_become_text():
    assert read("---\n---\nText.\n").metadata == {}
    document = read("+++\nwhen = 2024-03-01T10:00:00Z\nday = 2024-03-01\n+++\nx\n")
    assert document.metadata == {"when": "2024-03-01T10:00:00+00:00", "day": "2024-03-01"}


@pytest.mark.parametrize("text, line, message", [
    ("---\ntitle: ok\nbad: [unclosed\n---\nx\n", 3, "invalid YAML front matter: expected ',' or ']'"),
    ("---\ntitle: a: b\n---\nx\n", 2, "invalid YAML front matter: mapping values are not allowed here"),
    ("+++\ntitle = \"ok\"\nbad = \n+++\nx\n", 3, "invalid TOML front matter"),
    ("---\n- a\n- b\n---\nx\n", 1, "YAML front matter must be a mapping of fields, not list"),
    ("---\njust a sentence\n---\nx\n", 1, "YAML front matter must be a mapping of fields, not str"),
])
def test_invalid_front_matter_is_an_error_with_its_line(text, line, message):
    with pytest.raises(DocumentError) as caught:
        read(text)
    assert caught.value.line == line
    assert caught.value.message.startswith(message)


def test_front_matter_that_expands_enormously_is_refused():
    bomb = "---\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefgh":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
    with pytest.raises(DocumentError, match="over 10000 values"):
        read(bomb + "---\nx\n")


# --- rule 2: explicit ids ---------------------------------------------------------------------


@pytest.mark.parametrize("heading, title, path", [
    ("## Install { #setup }", "Install", "setup"),
    ("## Install {#setup}", "Install", "setup"),
    ("## Install {#setup .lead}", "Install", "setup"),
    ("## Install {: #setup data-x=\"1\" }", "Install", "setup"),
    ("## Install {.lead}", "Install", "install"),
    ("## Using {braces} here", "Using {braces} here", "using-braces-here"),
    ("## Set {x}", "Set {x}", "set-x"),
])
def test_explicit_heading_ids(heading, title, path):
    [section] = read(f"{heading}\ntext\n").sections
    assert (section.title, section.path) == (title, path)


def test_an_explicit_id_starts_a_path_and_its_children_follow_it():
    document = read("# Guide\n\n## Install {#setup}\na\n\n### Linux\nb\n\n## Use\nc\n")
    assert paths(document) == ["setup", "setup/linux", "guide/use"]
    assert by_path(document)["setup/linux"].headings == ("Guide", "Install", "Linux")


# --- rule 3: MDX and tags ---------------------------------------------------------------------


MDX = """\
import Tabs from '@theme/Tabs';
import TabItem from '@theme/TabItem';
import {
  Highlight,
} from '@site/src/components';

export const meta = {
  title: 'Passwords',

  nested: { a: [1, 2] },
}

export default function Layout({ children }) {
  return <div>{children}</div>
}

Intro with <Highlight color="#25c2a0">highlighted</Highlight> words.

## Install

<Tabs groupId="pm">
<TabItem value="npm" label="npm" default>
```bash
# a comment, not a heading
npm install x
echo "<b>kept: a fence right after a JSX line is code</b>"
```
</TabItem>
</Tabs>

<Card
  title="Multi-line props"
  meta={{ since: 'v2', flags: { beta: true } }}
>
  Card text.
</Card>

<Badge text="new" /> and <>fragment text</> stay.

{/* an MDX comment */}
"""


def test_mdx_statements_and_jsx_tags_are_removed_and_their_text_kept():
    document = read(MDX, mdx=True)
    intro, install = document.sections
    assert intro.content == "Intro with highlighted words."
    assert intro.line == 17
    assert install.content == (  # the tab's label, the card's title: props a reader sees
        "npm\n```bash\n# a comment, not a heading\nnpm install x\n"
        "echo \"<b>kept: a fence right after a JSX line is code</b>\"\n```\n\nMulti-line props\nCard text.\n\n"
        "and fragment text stay.")
    assert paths(document) == ["", "install"]


def test_in_mdx_a_fence_right_after_a_jsx_line_is_code():
    text = '<Note type="tip">\n~~~html\n<b>kept</b>\n# not a heading\n~~~\n</Note>\n'
    assert content_of(text, mdx=True) == "~~~html\n<b>kept</b>\n# not a heading\n~~~"
    assert content_of(text) == "~~~html\nkept\n# not a heading\n~~~"  # Markdown: one HTML block, tags go


def test_a_statement_ends_at_a_blank_line_when_its_brackets_never_close():
    document = read("export const broken = {\n  a: 1\n\nText after.\n", mdx=True)
    assert [s.content for s in document.sections] == ["Text after."]


def test_import_lines_in_plain_markdown_are_prose():
    assert content_of("import this\n\nexport that\n") == "import this\n\nexport that"


def test_html_tags_in_markdown_are_removed_but_never_in_code():
    text = ("Press <kbd>Ctrl</kbd>+<kbd>C</kbd>; write `<div>` or ``a `<b>` c``.\n\n"
            "<p align=\"center\">\n  <img src=\"logo.png\" alt=\"Logo\">\n</p>\n\n"
            "```html\n<div class=\"x\">kept</div>\n```\n\n    <span>indented code</span>\n")
    assert content_of(text) == ("Press Ctrl+C; write `<div>` or ``a `<b>` c``.\n\nLogo\n\n"  # an image's alt
                               "```html\n<div class=\"x\">kept</div>\n```\n\n    <span>indented code</span>")


def test_autolinks_and_comparisons_are_not_tags():
    text = "See <https://example.com> or <me@example.com>; a < b and c > d."
    assert content_of(text + "\n") == text


@pytest.mark.parametrize("text, expected", [
    ("a <b>bold</b> c", "a bold c"),
    ("<Foo bar={a > b} baz={{x: {y: 1}}} />ok", "ok"),
    ("x <!-- c\nd --> y", "x  y"),
    ("keep `<b>` and \\<b> as written", "keep `<b>` and \\<b> as written"),
    ("an `unclosed <b>code</b> span", "an `unclosed code span"),
    ("<Tabs\n  a=\"1\"\n>text</Tabs>", "text"),
])
def test_strip_markup(text, expected):
    assert strip_markup(text) == expected


def test_mdx_comments_only_in_mdx():
    assert strip_markup("a{/* note */}b", mdx=True) == "ab"
    assert strip_markup("a{/* note */}b") == "a{/* note */}b"


# --- rule 4: code -----------------------------------------------------------------------------


def test_fences_are_kept_verbatim_and_their_hash_lines_are_not_headings():
    text = ("# Real\n\n```python\n# not a heading\n<!-- kept -->\n::: kept.too\n\n\n{* kept *}\n```\n\n"
            "~~~\n## still code\n~~~~\n\n    # indented code\n")
    document = read(text)
    [section] = document.sections
    assert section.path == "real"
    assert section.content == ("```python\n# not a heading\n<!-- kept -->\n::: kept.too\n\n\n{* kept *}\n```\n\n"
                               "~~~\n## still code\n~~~~\n\n    # indented code")


def test_setext_headings():
    document = read("Title\n=====\n\nBody.\n\nSub title\n---------\nMore.\n")
    assert [(s.path, s.title, s.line) for s in document.sections] == [
        ("title", "Title", 1), ("title/sub-title", "Sub title", 6)]


def test_headings_inside_containers_do_not_start_sections():
    assert content_of("# Top\n\n> # quoted\n> text\n\n- # in a list\n") == "> # quoted\n> text\n\n- # in a list"


# --- rule 5: comments, directives, includes ---------------------------------------------------


def test_comments_directives_and_includes_are_dropped():
    text = ("# API\n\n<!-- one line -->\nBefore.\n<!--\nmany\nlines\n-->\nAfter.\n\n"
            "::: pkg.module.Name\n    options:\n      show_root_heading: true\n\nKept.\n\n"
            "{* ../docs_src/x.py hl[3] *}\n{! ../docs_src/y.md !}\n--8<-- \"snippet.md\"\nEnd.\n")
    assert content_of(text) == "Before.\n\nAfter.\n\nKept.\n\nEnd."


# --- rule 6: sections with no text ------------------------------------------------------------


def test_markup_only_sections_are_skipped_and_empty_headings_are_not_counted():
    text = ("# Empty\n\n## Markup only\n\n<!-- todo -->\n<img src=\"x.png\" />\n\n"
            "## Directive only\n\n::: pkg.Cls\n\n## Words\n\nSome words.\n\n## Punctuation\n\n---\n")
    document = read(text)
    assert paths(document) == ["empty/words"]
    assert document.skipped == [Skip(3, NO_TEXT), Skip(8, NO_TEXT), Skip(16, NO_TEXT)]


def test_text_before_the_first_heading_that_is_only_mdx_statements_is_not_counted():
    document = read("import A from 'a'\n\n# Title\nText.\n", mdx=True)
    assert paths(document) == ["title"] and document.skipped == []


# --- rule 7: ids ------------------------------------------------------------------------------


def test_ids_are_heading_paths_numbered_only_among_identical_siblings():
    text = ("Intro.\n# A\na\n## Setup\n1\n## Setup\n2\n### Setup\n3\n# B\nb\n## Setup\n4\n"
            "# A\nagain\n# Café & Crème!\nc\n# !!!\nd\n")
    assert paths(read(text)) == [
        "", "a", "a/setup", "a/setup-2", "a/setup-2/setup", "b", "b/setup", "a-2", "café-crème", "section"]


def test_a_literal_numbered_title_does_not_collide():
    assert paths(read("# A\n1\n# A 2\n2\n# A\n3\n")) == ["a", "a-2", "a-3"]


def test_explicit_ids_and_top_level_slugs_share_one_namespace():
    assert paths(read("# Setup\n1\n## Linux {#setup}\n2\n")) == ["setup", "setup-2"]


HANDBOOK = """\
Intro sentence.

# Install

Install it with pip.

## Linux

Use the package manager.

## Windows

Use the installer.

# Use

Run it.

## Options

Pass --fast.

# FAQ

Ask us.
"""


def ids(text):
    return {section.path for section in read(text).sections}


def test_inserting_a_heading_and_editing_a_sentence_change_no_other_id():
    before = ids(HANDBOOK)
    after = ids(HANDBOOK.replace("# Use\n", "# Upgrade\n\nUpgrade in place.\n\n# Use\n")
                .replace("Use the installer.", "Use the MSI installer, then reboot."))
    assert after == before | {"upgrade"}
    top = ids(HANDBOOK.replace("Intro sentence.\n", "Intro sentence.\n\n# News\n\nVersion 2 is out.\n"))
    assert top == before | {"news"}
    first = ids("# News\n\nVersion 2 is out.\n\n" + HANDBOOK)
    assert first == before - {""} | {"news"}  # the intro's text now sits under the new heading


def test_deleting_or_renaming_a_heading_changes_only_its_own_subtree():
    before = ids(HANDBOOK)
    deleted = ids(HANDBOOK.replace("## Linux\n\nUse the package manager.\n\n", ""))
    assert deleted == before - {"install/linux"}
    renamed = ids(HANDBOOK.replace("# Use\n", "# Usage\n"))
    assert before - renamed == {"use", "use/options"}
    assert renamed - before == {"usage", "usage/options"}


# --- rule 8: where each section comes from ----------------------------------------------------


def test_headings_and_lines():
    document = read("---\ntitle: T\n---\n\nIntro.\n\n# A\n\n## B\n\nText.\n\n### C\nMore.\n")
    assert [(s.title, s.headings, s.line) for s in document.sections] == [
        ("T", (), 5), ("B", ("A", "B"), 9), ("C", ("A", "B", "C"), 13)]


def test_crlf_line_endings():
    document = read("# A\r\n\r\nText.\r\n\r\n## B\r\nMore.\r\n")
    assert [(s.path, s.content, s.line) for s in document.sections] == [("a", "Text.", 1), ("a/b", "More.", 5)]


# --- MkDocs and Docusaurus blocks -------------------------------------------------------------


def test_admonition_and_tab_bodies_are_read_as_markdown_with_their_labels():
    text = ('# Install\n\n!!! note "Virtual environments"\n\n    Use a <b>venv</b>.\n\n'
            '    ```bash\n    # not a heading\n    python -m venv .venv\n    ```\n\n'
            '=== "uv"\n\n    ```bash\n    uv pip install x\n    ```\n\n'
            '??? tip\n\n    !!! warning\n\n        Nested body.\n')
    document = read(text)
    [section] = document.sections
    assert section.content == ("Virtual environments\n\nUse a venv.\n\n"
                               "```bash\n# not a heading\npython -m venv .venv\n```\n\n"
                               "uv\n\n```bash\nuv pip install x\n```\n\nTip\n\nWarning\n\nNested body.")


def test_a_heading_inside_an_admonition_does_not_start_a_section():
    document = read("# Top\n\n!!! note\n\n    ## Inside\n\n    Body.\n")
    assert paths(document) == ["top"] and "## Inside" in document.sections[0].content


def test_docusaurus_and_pymdownx_fenced_admonitions():
    text = ":::tip[Node version]\nUse 18.\n:::\n\n:::note Careful\nText.\n:::\n\n/// details | More\nHidden.\n///\n"
    assert content_of(text, mdx=True) == "Node version\nUse 18.\n\nCareful\nText.\n\nMore\nHidden."


def test_slug():
    assert slug("Café & Crème!") == "café-crème" and slug("!!!") == "section" and slug("a_b  c") == "a-b-c"


# --- the fixtures: real documentation shapes --------------------------------------------------


def test_mkdocs_fixture_index():
    document = fixture("mkdocs/docs/index.md")
    assert document.metadata["hide"] == ["navigation", "toc"] and document.metadata["title"] == "Widgets"
    assert paths(document) == ["", "install", "install/checking-the-install", "quick-start", "license"]
    sections = by_path(document)
    assert sections[""].title == "Widgets"
    assert sections[""].content == "Widgets logo\n\n**Widgets** builds small, fast widgets from plain files."  # alt kept
    install = sections["install"].content
    assert "# install the latest release\npip install widgets" in install
    assert "pip\n\n```bash" in install and "Virtual environments\n\nInstall Widgets" in install
    assert "!!!" not in install and "===" not in install
    assert sections["license"].content == "Widgets is released under the MIT license."


def test_mkdocs_fixture_tutorial_and_reference():
    tutorial = fixture("mkdocs/docs/tutorial/first-steps.md")
    assert paths(tutorial) == ["first-steps", "step-1", "step-1/details", "first-steps/step-2-create-a-widget-instance",
                               "first-steps/step-2-create-a-widget-instance/details", "first-steps/recap"]
    assert all("{*" not in s.content and "{!" not in s.content for s in tutorial.sections)
    assert by_path(tutorial)["step-1"].title == "Step 1: import Widget"
    assert '<span style="color: green;">INFO</span>' in by_path(tutorial)["first-steps"].content  # in a fence
    reference = fixture("mkdocs/docs/reference/api.md")
    assert paths(reference) == ["api-reference", "api-reference/helpers"]
    assert reference.skipped == [Skip(5, NO_TEXT), Skip(14, NO_TEXT)]
    assert by_path(reference)["api-reference/helpers"].content == "Small functions used by the builder."


def test_docusaurus_fixture():
    document = fixture("docusaurus/docs/intro.mdx")
    assert document.metadata == {"sidebar_position": 1, "title": "Getting started", "slug": "/",
                                 "tags": ["setup", "quickstart"]}
    assert paths(document) == ["", "getting-started", "start-your-site"]
    assert document.skipped == [Skip(63, NO_TEXT)]  # the second "Start your site" holds only a component
    started = by_path(document)["getting-started"].content
    assert "# create the site with npm\nnpm init" in started
    assert "Node version\n\nYou need Node.js 18.0 or above." in started
    assert "<" not in started.replace("```", "") and "import" not in document.sections[0].content


def test_supabase_fixture():
    document = fixture("supabase/guides/auth/passwords.mdx")
    assert document.metadata == {}
    assert paths(document) == ["", "with-email/enabling-email-and-password-based-authentication",
                               "with-email/signing-in-with-email-and-password", "with-phone", "resetting-a-password"]
    sections = by_path(document)
    assert sections[""].content.startswith("Users often expect to sign in")
    assert "export" not in sections[""].content and "Admonition" not in sections[""].content
    enabling = sections["with-email/enabling-email-and-password-based-authentication"].content
    assert "```python\n# sign up a new user\nresponse = supabase.auth.sign_up(" in enabling
    assert "TabPanel" not in enabling and "queryGroup" not in enabling
    signing = sections["with-email/signing-in-with-email-and-password"].content
    assert signing.startswith("Sign in\n\nCall `signInWithPassword()`") and "meta={{" not in signing  # the title prop
    assert sections["resetting-a-password"].content == (  # a step's title, then its text
        "Create a reset password page\nCreate a page that users land on after clicking the link in their email.")
    assert sections["with-phone"].content == "Phone sign in"  # an image only: its alt, not its src={{…}}
    assert document.skipped == []


def test_a_page_of_cards_yields_its_cards_text_in_reading_order():
    document = fixture("starlight/resources/plugins.mdx")
    assert document.skipped == []
    assert by_path(document)["community-plugins"].content == (
        "starlight-links-validator — Check for broken links in your Starlight pages.\n"
        "starlight-typedoc — Generate Starlight pages from TypeScript using TypeDoc.\n"
        "starlight-blog — Add a blog to your documentation site.")


def test_expression_props_go_indented_tags_go_and_indented_fences_stay_code():
    sections = by_path(fixture("starlight/guides/sidebar.mdx"))
    assert sections["groups"].content == "Group links under a heading:"  # config={[…]} is code, not prose
    assert sections["install"].content == (
        "npm\n\n```sh\nnpm create astro@latest -- --template starlight\n```\n\n"
        "pnpm\n\n```sh\npnpm create astro --template starlight\n```\n\n"
        "1. Run the setup wizard.\n\n2. Start the dev server.")


def test_mdx_code_blocks_are_unwrapped_and_read_as_mdx():
    [section] = fixture("starlight/guides/notebook.md").sections
    assert section.content == "Python\n\n```python\nprint(\"hello\")\n```\n\nThe notebook ends here."


def test_only_string_props_a_reader_sees_are_kept():
    assert strip_markup('<Card title="T" icon="star" description={desc} caption=\'C\' />', mdx=True) == "T — C"
    assert strip_markup('<Image alt="A chart" src={{ light: "a.png", dark: "b.png" }} />', mdx=True) == "A chart"
    assert strip_markup("<Preview config={[{ a: '}' }, `${x}]`]} />after", mdx=True) == "after"
    assert strip_markup("a <b and <3 <me@example.com>", mdx=True) == "a <b and <3 <me@example.com>"


def test_long_handbook_fixture():
    document = fixture("long/handbook.md")
    sections = by_path(document)
    long_one = sections["operations-handbook/configuration-reference"]
    assert len(long_one.content) > 60_000 and long_one.content.count("```ini") == 6
    assert "# profile 6" in long_one.content
    for area in ("backups", "deployments", "incidents"):
        base = f"operations-handbook/{area}"
        assert {f"{base}/example", f"{base}/notes", f"{base}/notes-2"} <= set(sections)
    assert len(paths(document)) == len(set(paths(document))) == 15


# --- nothing but DocumentError, whatever the text ---------------------------------------------

MARKDOWNISH = st.text(alphabet=string.ascii_letters[:6] + " \n\t#`~<>/{}!*=-+:[]().'\"\\é\u2028", max_size=300)


@settings(max_examples=300, deadline=None)
@given(text=MARKDOWNISH, mdx=st.booleans(), top=st.sampled_from(["", "---\n", "+++\n", "---\na: 1\n---\n"]))
def test_any_text_reads_or_raises_document_error(text, mdx, top):
    try:
        document = read(top + text, mdx=mdx)
    except DocumentError as error:
        assert error.line >= 1 and error.message
        return
    assert isinstance(document, Document)
    found = paths(document)
    assert len(found) == len(set(found))
    assert all(section.content.strip() and section.line >= 1 for section in document.sections)
