"""Small faults of the ``sections`` command, each checked through the command as a real subprocess:
one-line errors for bad arguments (before anything loads), one JSON shape for search, ``delete
--source`` with the path as ingest was given it, an honest rate, the right column of a malformed
line, long queries shortened in headers, statistics after a bulk write, and the embedded server
stopped by a double Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg

from sections.reading.sample_corpus import stdlib_sections

ROOT = Path(__file__).resolve().parents[1]
MODEL = "text-embedding-3-small"
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing"  # opening it would be the error, were it opened


def child_env() -> dict[str, str]:
    """Nothing in the environment that could point the command elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "SECTIONS_DATA_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def write_jsonl(path: Path, sections: list[dict]) -> Path:
    path.write_text("".join(json.dumps(section) + "\n" for section in sections), encoding="utf-8")
    return path


def sections_cli(*args: object, stdin: str = "", cwd: Path = ROOT, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sections", *map(str, args)], capture_output=True, text=True,
                          input=stdin, cwd=cwd, env=env or child_env(), timeout=timeout)


def embedding(sim, database_url: str) -> list[str]:
    return ["--model", MODEL, "--base-url", sim.base_url, "--database-url", database_url, "--dimensions", "16"]


def one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for part in expected:
        assert part in result.stderr, result.stderr
    return result.stderr


def test_an_empty_query_and_a_k_under_one_are_one_line_errors_before_anything_opens():
    one_line_error(sections_cli("search", "", "--database-url", UNREACHABLE), "the query is empty")
    one_line_error(sections_cli("search", "   ", "--database-url", UNREACHABLE), "the query is empty")
    one_line_error(sections_cli("search", "logs", "-k", "0", "--database-url", UNREACHABLE), "-k must be at least 1")


def test_chunk_options_are_checked_before_anything_is_read_opened_or_loaded(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("# A\n\nText.\n")
    common = ["--database-url", UNREACHABLE]
    one_line_error(sections_cli("ingest", doc, "--chunk-tokens", "0", *common), "--chunk-tokens must be at least 16")
    one_line_error(sections_cli("ingest", doc, "--chunk-overlap", "500", *common), "--chunk-overlap", "--chunk-tokens")
    one_line_error(sections_cli("ingest", doc, "--chunk-tokens", "100", "--chunk-overlap", "60", *common),
                   "--chunk-overlap must be between 0 and half of --chunk-tokens (50)")
    one_line_error(sections_cli("ingest", tmp_path / "missing", "--chunk-overlap", "-1", *common), "--chunk-overlap")


def test_a_malformed_jsonl_line_is_reported_at_its_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "content": "ok"}\n{"id": "b", "title": "t", "content": oops}\n')
    result = sections_cli("ingest", path, "--database-url", UNREACHABLE)
    assert f"{path}:2: malformed JSON: Expecting value at column 38" in result.stderr
    document = tmp_path / "bad.json"
    document.write_text('[\n {"id": "a", "content": "x"},\n {"id": "b" "content": "y"}\n]')
    assert f"{document}:3: malformed JSON: Expecting ',' delimiter at column 13" in \
        sections_cli("ingest", document, "--database-url", UNREACHABLE).stderr


def test_search_answers_in_one_json_shape_and_shortens_long_queries_in_headers(sim, database_url, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", stdlib_sections(30, tokens_per_section=60))
    assert sections_cli("ingest", corpus, *embedding(sim, database_url)).returncode == 0
    one = sections_cli("search", "the os module", "-k", "2", "--json", *embedding(sim, database_url))
    assert one.returncode == 0, one.stderr
    single = json.loads(one.stdout)
    lines = sections_cli("search", "-", "-k", "2", "--json", *embedding(sim, database_url),
                         stdin="the os module\nthe json module\n")
    answers = [json.loads(line) for line in lines.stdout.splitlines()]
    assert set(single) == set(answers[0]) == {"query", "hits"}
    assert single == answers[0] and len(answers) == 2 and len(single["hits"]) == 2

    long_query = "where is the answer " * 5_000  # 100,000 characters, as a pipe can send
    table = sections_cli("search", "-", "-k", "1", *embedding(sim, database_url), stdin=long_query + "\n")
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "where is the answer" in line)
    assert len(header.strip()) <= 110 and "…" in header
    assert len(table.stdout) < 5_000


def test_the_rate_counts_what_was_embedded_not_what_was_unchanged(sim, database_url, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", stdlib_sections(40, tokens_per_section=60))
    first = json.loads(sections_cli("ingest", corpus, *embedding(sim, database_url), "--json").stdout)
    assert first["embedded"] == 40 and first["sections_per_s"] > 0
    again = json.loads(sections_cli("ingest", corpus, *embedding(sim, database_url), "--json").stdout)
    assert again["unchanged"] == 40 and again["sections_per_s"] == 0


def test_delete_source_takes_the_path_as_ingest_was_given_it(sim, database_url, tmp_path):
    docs = tmp_path / "site" / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "guide" / "intro.md").write_text("# Intro\n\nHow to start with the tool.\n\n## Next\n\nWhat comes next after the start.\n")
    (docs / "guide" / "deep.md").write_text("# Deep\n\nThe details.\n")
    (docs / "faq.md").write_text("# FAQ\n\nQuestions.\n")
    assert sections_cli("ingest", "docs", *embedding(sim, database_url), cwd=tmp_path / "site").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = ["--database-url", database_url]

    def delete(path: str) -> dict:
        result = sections_cli("delete", "--source", path, "--yes", "--json", *url, cwd=elsewhere)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert delete("guide/intro.md")["sections"] == 2  # as search shows it: relative to the folder named
    assert delete("guide")["sections"] == 1  # a folder the same way
    assert delete("guide")["sections"] == 0
    assert delete("faq.md")["sections"] == 1


def test_a_bulk_ingest_leaves_statistics_the_planner_can_use(sim, database_url, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", stdlib_sections(300, tokens_per_section=30))
    assert sections_cli("ingest", corpus, *embedding(sim, database_url)).returncode == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = dict(conn.execute("select relname, reltuples from pg_class "
                                 "where relname in ('sections', 'section_embeddings')").fetchall())
    assert rows == {"sections": 300, "section_embeddings": 300}  # analyzed now, not when autovacuum gets to it


def _postmaster(pgdata: Path) -> int | None:
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text().splitlines()[0])
    return pid if psutil.pid_exists(pid) else None


def test_a_double_ctrl_c_stops_the_embedded_server_it_started(sim, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", stdlib_sections(400, tokens_per_section=100))
    sim.configure(latency_base=4.0)  # a request stays in flight past both signals
    env = child_env() | {"SECTIONS_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen([sys.executable, "-m", "sections", "ingest", str(corpus), "--model", MODEL,
                                "--base-url", sim.base_url, "--dimensions", "16", "--concurrency", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while sim.stats()["in_flight"] < 1:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    pgdata = tmp_path / "data" / "postgres"
    assert _postmaster(pgdata) is not None
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 30  # a fast shutdown still has to finish on a loaded machine
    while _postmaster(pgdata) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _postmaster(pgdata) is None  # stopped, not left running with nobody to stop it
