"""The ``sections`` command, in-process (typer's runner) and as a real subprocess.

Embedding goes to the simulator over HTTP (``--base-url``); storage to a fresh database of the
embedded Postgres. The simulator's ``/stats`` proves what was (or was not) sent.
"""
import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest
from typer.testing import CliRunner

from sections.cli.app import app
from sections.reading.sample_corpus import stdlib_sections
from core.supabase_store import section_text
from sections.engine.tokens import TiktokenTokenizer

runner = CliRunner()
MODEL = "text-embedding-3-small"


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "sections.jsonl"
    sections = stdlib_sections(120, tokens_per_section=100)
    path.write_text("".join(json.dumps(s) + "\n" for s in sections), encoding="utf-8")
    return path, sections


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def common(sim, database_url):
    return ["--model", MODEL, "--base-url", sim.base_url, "--database-url", database_url, "--dimensions", "32"]


def test_ingest_then_rerun_then_search_as_a_subprocess(sim, database_url, corpus_file):
    path, sections = corpus_file
    command = [sys.executable, "-m", "sections.cli.app", "ingest", str(path), *common(sim, database_url), "--json"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["embedded"] == 120 and summary["failed"] == 0 and summary["tokens"] == sim.stats()["tokens"]
    again = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=120).stdout)
    assert again["unchanged"] == 120 and again["embedded"] == 0 and again["tokens"] == 0

    target = sections[7]
    found = subprocess.run([sys.executable, "-m", "sections.cli.app", "search", section_text(target["title"], target["content"]),
                            "-k", "3", "--json", *common(sim, database_url)[:6], "--dimensions", "32"],
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["id"] == target["id"]


def test_every_source_format(sim, database_url, db, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"id": "j1", "title": "t", "content": "json one"}]))
    (tmp_path / "b.csv").write_text("id,title,content,lang\nc1,T,csv one,en\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Install\n\npip install it, then import it\n\n## Use\n\nrun it from the command line\n")
    (tmp_path / "notes.txt").write_text("plain text notes")
    result = run("ingest", tmp_path / "a.json", tmp_path / "b.csv", tmp_path / "docs", tmp_path / "notes.txt",
                 *common(sim, database_url), "--json")
    assert result.exit_code == 0, result.output
    ids = {r[0] for r in db.execute("select id from sections")}
    assert ids == {"j1", "c1", "guide.md#install", "guide.md#install/use", "notes.txt"}
    assert db.execute("select metadata->>'lang' from sections where id = 'c1'").fetchone()[0] == "en"
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == 5


def test_stdin(sim, database_url, db):
    lines = "".join(json.dumps({"id": f"s{i}", "content": f"from stdin {i}"}) + "\n" for i in range(3))
    result = runner.invoke(app, ["ingest", "-", *common(sim, database_url), "--json"], input=lines)
    assert result.exit_code == 0, result.output
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == 3


@pytest.mark.parametrize("content, where", [
    ('{"id": "a", "content": "ok"}\n{"id": "b", "content": \n', "bad.jsonl:2"),
    ('{"id": "a", "content": "ok"}\n{"content": "no id"}\n', "bad.jsonl:2"),
    ('{"id": "a", "content": "ok"}\n{"id": "a", "content": "again"}\n', "bad.jsonl:2"),
    ('{"id": "a", "content": "   "}\n', "bad.jsonl:1"),
])
def test_bad_input_names_file_and_line_and_writes_nothing(sim, database_url, db, tmp_path, content, where):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    result = run("ingest", bad, *common(sim, database_url))
    assert result.exit_code == 1
    assert where in result.output
    assert db.execute("select count(*) from sections").fetchone()[0] == 0
    assert sim.stats()["requests"] == 0


def test_skip_invalid_ingests_the_valid_ones_and_exits_2(sim, database_url, db, tmp_path):
    bad = tmp_path / "mixed.jsonl"
    bad.write_text('{"id": "a", "content": "fine"}\nnot json\n{"id": "b", "content": "also fine"}\n')
    result = run("ingest", bad, *common(sim, database_url), "--skip-invalid")
    assert result.exit_code == 2
    assert "mixed.jsonl:2" in result.output
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == 2


def test_a_failed_section_exits_2_and_is_reported(sim, database_url, db, corpus_file):
    path, sections = corpus_file
    sim.configure(poison=[sections[3]["content"][:40]])
    result = run("ingest", path, *common(sim, database_url), "-v")
    assert result.exit_code == 2
    assert sections[3]["id"] in result.output and "400" in result.output
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == 119


def test_dry_run_sends_nothing_and_counts_tokens(sim, database_url, db, corpus_file):
    path, sections = corpus_file
    result = run("ingest", path, *common(sim, database_url), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    tokenizer = TiktokenTokenizer()
    assert report["would_embed"] == 120
    assert report["tokens"] == sum(tokenizer.count(section_text(s["title"], s["content"])) for s in sections)
    assert report["estimated_cost_usd"] == pytest.approx(report["tokens"] * 0.02 / 1e6, abs=1e-6)
    assert sim.stats()["requests"] == 0
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == 0


def test_quota_stops_with_exit_1_and_a_rerun_finishes(sim, database_url, db, corpus_file):
    path, _ = corpus_file
    sim.configure(quota_tokens=3_000)
    result = run("ingest", path, *common(sim, database_url), "--concurrency", "1")
    assert result.exit_code == 1 and "quota" in result.output
    sim.configure(quota_tokens=None)
    result = run("ingest", path, *common(sim, database_url), "--json")
    assert result.exit_code == 0
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == 120


def test_no_secret_in_any_output(sim, database_url, corpus_file, monkeypatch):
    path, _ = corpus_file
    sim.configure(api_key="sk-the-right-key-000")
    env = {"OPENAI_API_KEY": "sk-very-secret-key-12345"}
    wrong_key = run("ingest", path, *common(sim, database_url), env=env)
    assert wrong_key.exit_code == 1 and "401" in wrong_key.output
    bad_db = run("ingest", path, "--model", MODEL, "--base-url", sim.base_url,
                 "--database-url", "postgresql://admin:hunter2-db-password@127.0.0.1:1/nowhere", env=env)
    assert bad_db.exit_code == 1 and "cannot open" in bad_db.output
    for output in (wrong_key.output, bad_db.output):
        assert "very-secret" not in output and "12345" not in output and "hunter2" not in output
    assert sim.stats()["by_status"].get("200", 0) == 0


def test_status_sync_and_index(sim, database_url, db, corpus_file):
    path, sections = corpus_file
    assert run("ingest", path, *common(sim, database_url), "--json").exit_code == 0
    db.execute("update sections set content = content || ' (changed)' where id = %s", (sections[0]["id"],))
    db.commit()
    report = json.loads(run("status", "--database-url", database_url, "--json").output)
    assert report["collections"] == {"default": 120}
    assert report["models"][MODEL]["stale"] == 1 and report["models"][MODEL]["embedded"] == 120
    synced = run("sync", *common(sim, database_url), "--json")
    assert synced.exit_code == 0 and json.loads(synced.output)["embedded"] == 1
    indexed = run("index", "--model", MODEL, "--database-url", database_url)
    assert indexed.exit_code == 0 and "section_embeddings_hnsw" in indexed.output
    table = run("status", "--database-url", database_url)
    assert MODEL in table.output


def test_simulate_serves_on_loopback_with_the_given_faults():
    process = subprocess.Popen(
        [sys.executable, "-m", "sections.cli.app", "simulate", "--port", "0", "--shuffle", "--rpm", "100"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        base = line.split()[-1].removesuffix("/v1")
        config = json.load(urllib.request.urlopen(base + "/admin/config", timeout=5))
        assert config["shuffle"] is True and config["rpm"] == 100
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_simulate_help_lists_the_simulator_flags():
    out = subprocess.run([sys.executable, "-m", "sections.cli.app", "simulate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--tpm-burst" in out.stdout and "sections simulate" in out.stdout


def test_demo_with_the_local_model_finds_the_right_topics(database_url):
    from sections.cli.app import DEMO_COLLECTION, DEMO_QUERIES
    from core.embedding_service import EmbeddingService
    from core.supabase_store import SupabaseStore

    result = run("demo", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    assert "ingest summary (all-MiniLM-L6-v2)" in result.output
    service = EmbeddingService(model="all-MiniLM-L6-v2")
    assert service.provider_name == "local"
    with SupabaseStore(database_url) as store:
        assert store.collections() == {DEMO_COLLECTION: store.collections()[DEMO_COLLECTION]}
        assert store.search("exceptions", service, k=1) == []  # the user's own collection stays clean
        for query, topic in DEMO_QUERIES.items():
            top = store.search(query, service, k=1, collection=DEMO_COLLECTION)[0]
            assert top["id"].startswith(f"pydoc/{topic}#"), (query, top["id"])


def _long_markdown(paragraphs: int = 40) -> str:
    body = "\n\n".join(" ".join(f"Paragraph {p} sentence {s} is about subject number {p}." for s in range(6))
                       for p in range(paragraphs))
    return f"# Guide\n\nA short intro to this guide.\n\n## Long part\n\n{body}\n"


def test_long_document_sections_are_chunked_and_search_groups_them(sim, database_url, db, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text(_long_markdown(), encoding="utf-8")
    (docs / "logo.png").write_bytes(b"\x89PNG")
    command = [sys.executable, "-m", "sections.cli.app", "ingest", str(docs), *common(sim, database_url),
               "--chunk-tokens", "200", "--chunk-overlap", "20", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["read"] == 2 and summary["chunks"] > 10 and summary["embedded"] == summary["chunks"]
    assert summary["files_not_read"] == {".png": 1}
    ids = [r[0] for r in db.execute("select id from sections order by id")]
    chunks = [i for i in ids if "~" in i]
    assert len(chunks) == summary["chunks"] - 1 and all(i.startswith("guide.md") for i in ids)
    parent = chunks[0].rsplit("~", 1)[0]
    assert parent not in ids  # the long section is stored as its chunks only
    assert db.execute("select metadata->>'parent', (metadata->>'chunks')::int from sections where id = %s",
                      (chunks[0],)).fetchone() == (parent, len(chunks))

    # the simulator's vectors carry no meaning: ask for more hits than rows, so grouping sees them all
    query = ["search", "subject number 7 and subject number 8", "-k", "10", "--json", *common(sim, database_url)]
    grouped = json.loads(subprocess.run([sys.executable, "-m", "sections.cli.app", *query], capture_output=True,
                                        text=True, timeout=120).stdout)["hits"]
    everything = json.loads(subprocess.run([sys.executable, "-m", "sections.cli.app", *query, "--no-group"],
                                           capture_output=True, text=True, timeout=120).stdout)["hits"]
    keys = [hit["parent"]["id"] if hit["parent"] else hit["id"] for hit in grouped]
    assert len(keys) == len(set(keys)) == 2  # one hit per section: the long one and the intro
    assert len(everything) == 10 and sum(hit["parent"] is not None for hit in everything) >= 9
    chunk_hit = next(hit for hit in grouped if hit["parent"])
    assert chunk_hit["parent"] == {"id": parent, "title": "Guide > Long part"}
    assert chunk_hit["metadata"]["source"] == "guide.md" and "chunk" in chunk_hit["metadata"]


def test_a_folder_with_nothing_readable_exits_1_and_says_why(sim, database_url, tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "b.yml").write_text("x: 1\n")
    done = subprocess.run([sys.executable, "-m", "sections.cli.app", "ingest", str(tmp_path), *common(sim, database_url)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "no sections read" in done.stderr and ".png" in done.stderr and ".yml" in done.stderr
    assert "Traceback" not in done.stderr and sim.stats()["requests"] == 0


def test_editing_one_sentence_and_adding_a_heading_embeds_only_those_two(sim, database_url, tmp_path):
    import shutil
    from pathlib import Path

    docs = tmp_path / "docs"
    shutil.copytree(Path(__file__).parent / "fixtures" / "docs" / "mkdocs" / "docs", docs)
    command = ["ingest", docs, *common(sim, database_url), "--json"]
    first = json.loads(run(*command).output)
    assert first["embedded"] > 5 and first["failed"] == 0

    tutorial = docs / "tutorial" / "first-steps.md"
    text = tutorial.read_text(encoding="utf-8")
    prose = [line for line in text.splitlines() if len(line) > 30 and line[0].isalpha()]
    sentence = prose[len(prose) // 2]
    tutorial.write_text(text.replace(sentence, sentence + " One more sentence.", 1), encoding="utf-8")
    index = docs / "index.md"
    text = index.read_text(encoding="utf-8")
    body_start = text.index("\n---", 1) + 4 if text.startswith("---") else 0  # after the front matter
    index.write_text(text[:body_start] + "\n\n## A new first heading\n\nBrand new words are written here.\n\n" + text[body_start:],
                     encoding="utf-8")
    second = json.loads(run(*command).output)
    assert second["embedded"] == 2, second  # the edited section and the new one (which took over the
    assert second["unchanged"] == second["chunks"] - 2  # text above the old first heading); nothing else


def test_a_typo_in_the_model_name_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "a.md").write_text("# A\ntext\n")
    refused = subprocess.run([sys.executable, "-m", "sections.cli.app", "ingest", str(tmp_path), "--model", "all-MiniLM-L6-v3",
                              "--database-url", "postgresql://u:pw@127.0.0.1:1/none"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "unknown model 'all-MiniLM-L6-v3'" in refused.stderr and "all-MiniLM-L6-v2" in refused.stderr
    assert "no OpenAI API key" not in refused.stderr and "cannot open" not in refused.stderr  # checked first
    assert "Traceback" not in refused.stderr


def test_the_bar_shows_the_tokens_the_summary_bills(sim, database_url, tmp_path):
    """Identical texts are sent (and billed) once: the bar's token count is the bill, as in the
    summary, not the sum of the answers' counts."""
    same = {"title": "Twin", "content": "The same words in two sections, sent once."}
    lines = [{"id": f"twin-{i}", **same} for i in range(2)] + [{"id": "other", "title": "Other", "content": "Else."}]
    path = tmp_path / "twins.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "sections.cli.app", "ingest", str(path), *common(sim, database_url)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    bar_tokens = re.findall(r"([\d,]+) tokens", done.stderr)[-1]  # the bar's last frame
    summary_tokens = re.search(r"tokens\s*│\s*([\d,]+)", done.stdout).group(1)
    assert bar_tokens == summary_tokens == f"{sim.stats()['tokens']:,}"


def test_ingest_draws_on_the_rate_budget_it_shares_unless_told_otherwise(sim, database_url, db, tmp_path):
    """Concurrent ingests (and syncs, and watchers) of one model and server keep to one schedule in
    the database, so they do not learn the limit from each other's 429s; --own-budget opts out."""
    for name, flag in (("alone", ["--own-budget"]), ("shared", [])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name}-{i}", "content": f"{name} text {i}"}) + "\n"
                                for i in range(5)), encoding="utf-8")
        result = run("ingest", path, *common(sim, database_url), "--tpm", "1000000", *flag, "--json")
        assert result.exit_code == 0, result.output
        budgets = [row[0] for row in db.execute("select key from rate_budgets")]
        assert budgets == ([] if flag else [budgets[0]]) and (not budgets or MODEL in budgets[0])
