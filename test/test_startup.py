"""What a start of the ``sections`` command costs: nothing heavy is imported or loaded that the run
does not need, the database is checked before any model loads, and repeated searches with the
local model load it once (``sections search -``). Each as a real subprocess, where a user meets it.

Timings are not asserted here (the bench's ``startup`` scenario measures them); what is asserted is
what makes them: which modules a run imports, and what it does in which order.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from core.supabase_store import section_text

TORCH = ("torch", "sentence_transformers", "transformers")
HEAVY = (*TORCH, "onnxruntime", "tokenizers")  # every model runtime
REFUSED = "postgresql://u:pw@127.0.0.1:1/none"  # nothing listens on port 1: connection refused at once


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level packages named by ``python -X importtime`` (one line per module imported)."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def _cli(*args: str, stdin: str | None = None, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "sections.cli.app", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def small_corpus(tmp_path):
    sections = [{"id": "tea", "title": "Brewing tea", "content": "Steep green tea leaves in water at 80 degrees."},
                {"id": "bike", "title": "Bicycle repair", "content": "Patch an inner tube after a puncture."},
                {"id": "tax", "title": "Tax returns", "content": "File your income tax return before the deadline."}]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in sections), encoding="utf-8")
    return path, sections


def test_importing_the_command_imports_no_model_library():
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sections.cli.app"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = _imported(done.stderr)
    assert "sections" in imported and not imported & set(HEAVY), imported & set(HEAVY)


def test_a_search_with_an_openai_compatible_model_never_imports_torch(sim, database_url, small_corpus):
    path, sections = small_corpus
    options = ["--model", "text-embedding-3-small", "--base-url", sim.base_url, "--database-url", database_url]
    assert _cli("ingest", str(path), *options, "--json").returncode == 0
    target = sections[1]
    found = _cli("search", section_text(target["title"], target["content"]), *options, "--json", importtime=True)
    assert found.returncode == 0, found.stderr[-2000:]
    assert json.loads(found.stdout)["hits"][0]["id"] == "bike"
    imported = _imported(found.stderr)
    assert "openai" in imported and not imported & set(HEAVY), imported & set(HEAVY)
    assert not re.search(r"\|\s+aiohttp\.", found.stderr)  # the SDK's async transport: never used here, not loaded


@pytest.mark.parametrize("command", [["search", "anything"], ["ingest", "FILE"], ["sync"], ["demo"]])
def test_a_refused_database_is_reported_before_the_local_model_loads(command, small_corpus):
    """The local model takes seconds to load (torch); a database that cannot be reached must be
    reported first, in one line, without loading it."""
    path, _ = small_corpus
    args = [str(path) if arg == "FILE" else arg for arg in command]
    refused = _cli(*args, "--database-url", REFUSED, importtime=True)
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if not line.startswith("import time:")]
    assert len(lines) == 1 and lines[0].startswith("error: cannot open postgresql://u:***@127.0.0.1:1/none"), lines
    assert "pw" not in lines[0] and "Traceback" not in refused.stderr
    assert not _imported(refused.stderr) & set(HEAVY)


def test_search_reads_queries_from_stdin_and_answers_each_as_it_comes(sim, database_url, small_corpus):
    """One process, one service: each query is answered (one JSON line) before the next is even
    written, so a program can keep the pipe open and use it as a warm search worker."""
    path, sections = small_corpus
    for section in sections:  # untitled: the embedded text is the content, a one-line query
        section["title"] = ""
    path.write_text("".join(json.dumps(s) + "\n" for s in sections), encoding="utf-8")
    options = ["--model", "text-embedding-3-small", "--base-url", sim.base_url, "--database-url", database_url]
    assert _cli("ingest", str(path), *options, "--json").returncode == 0
    sim.reset()
    worker = subprocess.Popen([sys.executable, "-m", "sections.cli.app", "search", "-", "-k", "2", *options, "--json"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for section in (sections[2], sections[0], sections[2]):
            query = section["content"]
            worker.stdin.write(query + "\n\n")  # a blank line is no query
            worker.stdin.flush()
            answer = json.loads(worker.stdout.readline())  # blocks until this query is answered
            assert answer["query"] == query and answer["hits"][0]["id"] == section["id"]
            assert len(answer["hits"]) == 2
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0, worker.stderr.read()
        assert worker.stdout.read() == ""
    finally:
        worker.kill()
    assert sim.stats()["requests"] == 3  # one request a query, nothing else


def test_repeated_searches_with_the_local_model_load_it_once(database_url, small_corpus):
    path, sections = small_corpus
    assert _cli("ingest", str(path), "--database-url", database_url, "--json").returncode == 0
    queries = ["how hot should the water be for green tea", "fix a flat tyre", "when is my income tax due"]
    found = _cli("search", "-", "-k", "1", "--database-url", database_url, "--json", stdin="\n".join(queries) + "\n",
                 importtime=True)
    assert found.returncode == 0, found.stderr[-2000:]
    imported = _imported(found.stderr)
    assert "onnxruntime" in imported and not imported & set(TORCH), imported & set(TORCH)  # the default runs without torch
    answers = [json.loads(line) for line in found.stdout.splitlines()]
    assert [(a["query"], a["hits"][0]["id"]) for a in answers] == list(zip(queries, ["tea", "bike", "tax"]))
    tables = _cli("search", "-", "-k", "1", "--database-url", database_url, stdin="\n".join(queries[:2]) + "\n")
    assert tables.returncode == 0 and tables.stdout.count("“") == 2  # a table per query, titled with it


def test_a_query_is_sent_on_its_bound_and_counted_by_its_bill(sim):
    """Loading the tokenizer's ranks costs ~0.2 s of a start: a query that fits by its byte bound
    is sent without a count, and its count is what the server billed for it (exactly the same)."""
    from sections.engine.tokens import TiktokenTokenizer

    query = "how do I rotate the logs every night"
    script = ("import sys; from core.embedding_service import EmbeddingService; from sections.engine.tokens import _encoding; "
              "service = EmbeddingService(model='text-embedding-3-small', base_url=sys.argv[1]); "
              "service.generate_embedding(sys.argv[2]); print(_encoding.cache_info().currsize, service.total_tokens)")
    done = subprocess.run([sys.executable, "-c", script, sim.base_url, query], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", str(TiktokenTokenizer().count(query))]
