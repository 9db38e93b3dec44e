"""The documentation cannot drift from the code: its examples run, the commands it names parse, its
option tables are generated from the CLI, and the site builds with ``mkdocs build --strict``.

How the examples are marked and found: test/docs_pages.py. The runnable ones run as a user would
run them, through the installed ``sections`` command and ``python``, in a folder holding
``CORPUS`` (the small docs folder and files the pages' examples name), against a fresh database of
the embedded Postgres (``DATABASE_URL``) and the simulator standing in for OpenAI
(``OPENAI_BASE_URL``; any key is accepted), so an example that names ``text-embedding-3-small``
runs the same code as it would against OpenAI.
"""
from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from docs_pages import (DOCS, ROOT, Mark, commands, examples, inline_code, known_flags, page_name, pages, refusal,
                        rpc_calls, with_reference)

EXAMPLES = [example for page in pages() for example in examples(page)]
RUN_PAGES = [page for page in pages() if any(example.mark is Mark.RUN for example in examples(page))]
# Long options the pages name that belong to other tools than ``sections``: ``python -m bench``,
# ``python -m bench.reliability``, ``python test/docs_pages.py``, ``mkdocs build``.
OTHER_TOOLS_FLAGS = {"--quick", "--out", "--redraw", "--long", "--write", "--strict"}

CORPUS = {
    "docs/guide.md": """---
title: User guide
lang: en
---
# Install

Install the package with pip and run the demo.

## Linux

On Linux, use a virtual environment: python3 -m venv .venv, then activate it.

# Configuration

Settings are read from config.toml in the working folder.

## Debugging { #debug }

Set log_level = "debug" to see every request the server makes.
""",
    "docs/admin/logs.md": """---
title: Logs
lang: en
level: 2
---
# Rotate the logs

The server writes one log file a day. logrotate weekly keeps four weeks of them: add
/var/log/app/*.log to /etc/logrotate.d/app with the options weekly, rotate 4 and compress.
""",
    "docs/old.md": "# Old page\n\nThis page describes a feature that was removed.\n",
    "more.jsonl": '{"id": "faq-1", "title": "Reset a password", "content": "Open Settings, then Account, '
                  'then Reset password."}\n'
                  '{"id": "faq-2", "title": "Delete an account", "content": "Write to support; an account is '
                  'deleted within a week.", "metadata": {"lang": "en"}}\n',
    "questions.txt": "how do I rotate the logs\nhow do I reset my password\n",
}


def test_every_example_is_marked_run_or_not_run_with_a_reason():
    assert EXAMPLES, "no examples found: is docs/ there?"
    unmarked = [example.where for example in EXAMPLES if example.mark is None]
    assert unmarked == [], "mark each example <!-- run --> or <!-- not run: why --> on the line above it"


def test_an_example_run_by_another_test_is_read_by_that_test():
    for example in EXAMPLES:
        if example.mark is Mark.RUN_BY:
            test = ROOT / example.reason
            assert test.exists() and page_name(example.page) in test.read_text(encoding="utf-8"), example.where


def test_most_examples_run():
    not_run = [example for example in EXAMPLES if example.mark is Mark.NOT_RUN]
    assert len(not_run) * 3 <= len(EXAMPLES), [f"{e.where}: {e.reason}" for e in not_run]


@pytest.mark.parametrize("page", RUN_PAGES, ids=page_name)
def test_the_examples_of_a_page_run(page, sim, database_url, tmp_path):
    for name, text in CORPUS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "DATABASE_URL"))}
    env.update(DATABASE_URL=database_url, OPENAI_BASE_URL=sim.base_url, OPENAI_API_KEY="sk-docs-test",
               SECTIONS_DATA_DIR=str(tmp_path / ".data"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               PYTHONPATH=str(ROOT))
    for example in examples(page):
        if example.mark is not Mark.RUN:
            continue
        argv = ["bash", "-e", "-o", "pipefail", "-c", example.code] if example.is_shell else \
            [sys.executable, "-c", example.code]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (f"{example.where} exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
                                      f"\n--- stderr\n{done.stderr[-4000:]}")


def test_every_sections_command_in_an_example_parses():
    """The examples that run prove more; this names the bad line, and covers those not run."""
    refused = [f"{example.where}: {' '.join(argv)}: {problem}"
               for example in EXAMPLES if example.is_shell
               for argv in commands(example.code) if argv[0] == "sections"
               for problem in [refusal(argv)] if problem]
    assert refused == []


def test_python_examples_not_run_compile_and_import_what_exists():
    problems = []
    for example in EXAMPLES:
        if example.is_shell or example.mark is Mark.RUN:
            continue
        tree = ast.parse(example.code, filename=example.where)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in {"sections", "core"}:
                module = importlib.import_module(node.module)
                problems += [f"{example.where}: {node.module}.{alias.name}" for alias in node.names
                             if not hasattr(module, alias.name)]
    assert problems == []


def test_every_sections_command_in_the_prose_parses():
    """A span that only names a command (`sections ingest`) must name one that exists."""
    refused = []
    for page in pages():
        for line, code in inline_code(page):
            if code.startswith("sections ") and "…" not in code:
                argv = shlex.split(code)
                problem = refusal(argv) if len(argv) > 2 else refusal([*argv, "--help"])
                if problem:
                    refused.append(f"{page_name(page)}:{line}: `{code}`: {problem}")
    assert refused == []


def test_every_option_the_prose_names_exists():
    """Options named alone (`--hybrid`, `--filter KEY=VALUE`); whole command lines are parsed above."""
    flags = known_flags() | OTHER_TOOLS_FLAGS
    named = [(page_name(page), line, flag) for page in pages() for line, code in inline_code(page)
             if not code.startswith("sections ") for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", code)]
    assert [f"{page}:{line}: {flag}" for page, line, flag in named if flag not in flags] == []


def test_the_rpc_examples_name_parameters_the_sql_functions_have(db):
    calls = rpc_calls(DOCS / "supabase.md")
    assert {name for name, _ in calls} == {"match_sections", "hybrid_match_sections"}
    for name, given in calls:
        overloads = [set(row[0]) for row in db.execute("select proargnames from pg_proc where proname = %s", [name])]
        assert any(given <= parameters for parameters in overloads), (name, given, overloads)


def test_the_command_reference_is_generated_from_the_cli():
    page = DOCS / "commands.md"
    text = page.read_text(encoding="utf-8")
    assert text == with_reference(text), "an option changed: run python test/docs_pages.py --write"


def test_the_site_builds_without_a_warning(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "WARNING" not in output, output[-6000:]
    assert (tmp_path / "site" / "index.html").exists()
