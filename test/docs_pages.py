"""The documentation as data, for test/test_docs.py: the pages, their examples, the commands they
name, and the command reference generated from the CLI.

The pages are README.md and every ``docs/**/*.md``. Every ```` ```bash ````, ```` ```sh ````,
```` ```shell ```` and ```` ```python ```` fence in them is an example and carries one of two marks on
the line above it, an HTML comment that the rendered page does not show:

- ``<!-- run -->``: test/test_docs.py runs it, in the order of the page, with the page's own fresh
  database (``DATABASE_URL``), the simulator as the OpenAI server (``OPENAI_BASE_URL``), and a
  working folder holding the small corpus the examples name (``docs/``, ``more.jsonl``,
  ``questions.txt``); a shell block must exit 0 under ``bash -e -o pipefail``.
- ``<!-- run by test/NAME.py: HOW -->``: run by that test instead, for examples that need more than
  a subprocess gives (the blocks of docs/integrations.md share one namespace); test/test_docs.py
  checks that the test exists and reads the page.
- ``<!-- not run: REASON -->``: what cannot run here (a real OpenAI key or Supabase project, a
  server that runs until stopped, the whole test suite). Its ``sections`` commands are still
  parsed by the real command line, and its Python compiled with its imports resolved.

An example without a mark fails the test, so none is added unchecked. Other fences (``text``,
``sql``, ``js``) are shown output or code for other tools; the policy SQL of docs/supabase.md is
run by test/test_locked_down.py.

The option tables of docs/commands.md are generated from the typer app; ``python
test/docs_pages.py --write`` rewrites them after an option changes (the test says when).
"""
from __future__ import annotations

import argparse
import io
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

import typer.main
from markdown_it import MarkdownIt

if __name__ == "__main__":  # run as a script: the repository's packages import as they do under pytest
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.pages import filled  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE_LANGUAGES = {"bash", "sh", "shell", "python"}
MARK = re.compile(r"<!--\s*(?:(?P<run>run)|run by (?P<test>test/\w+\.py)(?::.*?)?|not run:\s*(?P<reason>\S.*?))\s*-->",
                  re.DOTALL)
REFERENCE_BLOCK = ("<!-- cli:reference -->", "<!-- /cli:reference -->")
SEPARATORS = {"&&", "||", "|", ";", "&"}
REDIRECTIONS = {"<", ">", ">>", "<<", "<<<", ">&", "<&"}


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


class Mark(Enum):
    RUN = "run"
    RUN_BY = "run by"  # another test runs it: ``Example.reason`` names the test file
    NOT_RUN = "not run"


@dataclass(frozen=True)
class Example:
    """One fenced example: where it is, its language and code, and whether the test runs it."""

    page: Path
    line: int  # 1-based, the fence's opening line
    language: str
    code: str
    mark: Mark | None  # None: unmarked, which the test refuses
    reason: str = ""  # why it is not run, or the test that runs it

    @property
    def where(self) -> str:
        return f"{page_name(self.page)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.language != "python"


def _tokens(page: Path) -> list:
    return MarkdownIt("commonmark").enable("table").parse(page.read_text(encoding="utf-8"))


def examples(page: Path) -> list[Example]:
    found: list[Example] = []
    tokens = _tokens(page)
    for at, token in enumerate(tokens):
        language = token.info.strip().split(" ")[0] if token.type == "fence" else ""
        if language not in EXAMPLE_LANGUAGES:
            continue
        before = tokens[at - 1] if at else None
        mark = MARK.fullmatch(before.content.strip()) if before is not None and before.type == "html_block" else None
        kind, reason = None, ""
        if mark is not None:
            kind = Mark.RUN if mark["run"] else Mark.RUN_BY if mark["test"] else Mark.NOT_RUN
            reason = mark["test"] or mark["reason"] or ""
        found.append(Example(page, token.map[0] + 1, language, token.content, kind, reason))
    return found


def inline_code(page: Path) -> Iterator[tuple[int, str]]:
    """Every inline code span of the page's prose, tables included, with its line."""
    for token in _tokens(page):
        if token.type == "inline":
            for child in token.children or []:
                if child.type == "code_inline":
                    yield token.map[0] + 1, child.content


# -- the commands an example runs ----------------------------------------------------------------------

def commands(shell: str) -> list[list[str]]:
    """The simple commands of a shell example, each as its argv: comments, line continuations,
    here-documents, redirections and leading ``NAME=value`` assignments left out, split at
    ``&&``, ``||``, ``|`` and ``;``."""
    found: list[list[str]] = []
    lines = iter(shell.replace("\\\n", " ").splitlines())
    for line in lines:
        lexer = shlex.shlex(_without_comment(line), posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, ""
        tokens = list(lexer)
        if "<<" in tokens:  # a here-document: its body is input, not commands
            end = tokens[tokens.index("<<") + 1]
            for body in lines:
                if body.strip() == end:
                    break
        argv: list[str] = []
        skip = False
        for token in [*tokens, ";"]:
            if skip:
                skip = False
            elif token in SEPARATORS:
                while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
                    argv.pop(0)
                if argv:
                    found.append(argv)
                argv = []
            elif token in REDIRECTIONS:
                skip = True
            else:
                argv.append(token)
    return found


def _without_comment(line: str) -> str:
    """``line`` up to its comment: a ``#`` that starts a word outside quotes (``guide.md#install``
    is a word, and ``Python's`` in a comment is no quote)."""
    quote = ""
    for at, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (at == 0 or line[at - 1].isspace()):
            return line[:at]
    return line


@cache
def sections_cli() -> Any:
    """The typer app as the click group it builds (typer ships its own click: duck-typed here)."""
    from sections.cli.app import app

    return typer.main.get_command(app)


def simulator_parser(prog: str = "sections simulate") -> argparse.ArgumentParser:
    from sections.simulator import server

    return server._parser(prog)


def refusal(argv: list[str]) -> str | None:
    """Why the ``sections`` command line ``argv`` would be refused before it runs (an unknown
    command or option, a missing argument, a value of the wrong type), or None when it parses."""
    group = sections_cli()
    if len(argv) < 2 or argv[1] in {"--help", "-h"}:
        return None
    command = group.commands.get(argv[1])
    if command is None:
        return f"no such command {argv[1]!r}"
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), \
                command.make_context(f"sections {argv[1]}", list(argv[2:])) as context:
            if argv[1] == "simulate":
                simulator_parser().parse_args(context.args)
    except SystemExit as error:  # argparse, for the simulator's flags
        return None if error.code == 0 else f"the simulator refuses {context.args}"
    except Exception as error:  # click's, from whichever click typer brings
        if type(error).__name__ == "Exit":
            return None  # --help
        if hasattr(error, "format_message"):
            return str(error.format_message())
        raise
    return None


def known_flags() -> set[str]:
    """Every long option of every ``sections`` command and of the simulator."""
    flags = {opt for command in sections_cli().commands.values() for param in command.params
             for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--")}
    flags |= {opt for action in simulator_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    return flags


# -- the Supabase RPC examples ---------------------------------------------------------------------------

RPC_MARK = "<!-- rpc:examples"


def rpc_calls(page: Path) -> list[tuple[str, set[str]]]:
    """Each ``supabase.rpc('function', {...})`` of the ``js`` fence after the ``rpc:examples``
    mark: the function and the parameter names its object gives (top-level keys only)."""
    text = page.read_text(encoding="utf-8")
    js = text.split(RPC_MARK, 1)[1].split("```js", 1)[1].split("```", 1)[0]
    js = re.sub(r"//[^\n]*", "", js)
    calls = []
    for call in re.finditer(r"rpc\('(\w+)',\s*\{", js):
        depth, at, top = 1, call.end(), []
        while depth:
            char = js[at]
            depth += {"{": 1, "[": 1, "}": -1, "]": -1}.get(char, 0)
            if depth == 1 and char not in "}]":
                top.append(char)
            at += 1
        calls.append((call.group(1), set(re.findall(r"(\w+)\s*:", "".join(top)))))
    return calls


# -- the generated command reference -------------------------------------------------------------------

def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _parameter_row(param: Any) -> str:
    if not hasattr(param, "is_flag"):  # an argument
        name = f"`{param.name.upper()}`" + (" …" if param.nargs == -1 else "")
        default = ""
    elif param.is_flag:
        name = ", ".join(f"`{opt}`" for opt in (*param.opts, *param.secondary_opts))
        default = f"`{param.opts[0] if param.default else param.secondary_opts[0]}`" if param.secondary_opts else ""
    else:
        metavar = param.metavar or param.name.upper()
        name = ", ".join(f"`{opt} {metavar}`" for opt in param.opts)
        default = "" if param.default is None else f"`{param.default}`"
    return f"| {name} | {_cell(getattr(param, 'help', None) or '')} | {default} |"


def _simulator_row(action: argparse.Action) -> str:
    metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
    name = ", ".join(f"`{opt}{metavar}`" for opt in action.option_strings)
    default = "" if action.nargs == 0 or action.default is None or action.default == [] else f"`{action.default}`"
    return f"| {name} | {_cell(action.help or '')} | {default} |"


def cli_reference() -> str:
    """The options of every command, as markdown: what ``sections COMMAND --help`` shows."""
    parts = []
    for name, command in sections_cli().commands.items():
        summary = _cell((command.help or "").split("\n\n")[0])
        parts += [f"### sections {name}", "", summary, ""]
        parts += ["| option | what it does | default |", "|---|---|---|"]
        if name == "simulate":  # its flags are the simulator's own parser's
            parts += [_simulator_row(action) for action in simulator_parser()._actions if action.dest != "help"]
        else:
            parts += [_parameter_row(param) for param in command.params if param.name != "help"]
        parts.append("")
    return "\n".join(parts)


def with_reference(text: str) -> str:
    """docs/commands.md's ``text`` with its reference block as the CLI has it now (the block is
    filled as the benchmark pages' are)."""
    return filled(text, REFERENCE_BLOCK, cli_reference(), DOCS / "commands.md")


def main() -> None:
    parser = argparse.ArgumentParser(description="Rewrite docs/commands.md's option tables from the CLI.")
    parser.add_argument("--write", action="store_true", required=True)
    parser.parse_args()
    page = DOCS / "commands.md"
    page.write_text(with_reference(page.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
