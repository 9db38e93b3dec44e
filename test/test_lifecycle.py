"""Sections that follow their sources, end to end through the ``sections`` command as a subprocess:
collections, ``--prune`` (and its dry run), ``delete``, ``drop-model``, ``sync --dry-run``, and
concurrent ingests that pay once. Embedding goes to the simulator; its ``/stats`` proves what was
sent. Storage is a fresh database of the embedded Postgres, read back with plain SQL; the tests
marked ``POOLED`` run a second time with the commands going through pgbouncer in transaction mode.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures_pgbouncer import POOLED

MODEL = "text-embedding-3-small"


def sections_cli(*args: object, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sections.cli.app", *map(str, args)], capture_output=True, text=True,
                          input=stdin if stdin is not None else "", timeout=timeout)


def embedding(sim, database_url) -> list[str]:
    return ["--model", MODEL, "--base-url", sim.base_url, "--database-url", database_url, "--dimensions", "16"]


def ids(db, collection: str | None = None) -> set[str]:
    if collection is None:
        return {row[0] for row in db.execute("select id from sections").fetchall()}
    return {row[0] for row in db.execute("select id from sections where collection = %s", (collection,)).fetchall()}


def vectors(db) -> set[str]:
    return {row[0] for row in db.execute("select section_id from section_embeddings").fetchall()}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A docs folder: two pages with headings, and a page in a subfolder."""
    root = tmp_path / "docs"
    (root / "guide").mkdir(parents=True)
    (root / "intro.md").write_text(textwrap.dedent("""\
        # Intro

        What this project does for you.

        ## Install

        Install it with pip install it.

        ## Old feature

        This feature is going away.
        """), encoding="utf-8")
    (root / "faq.md").write_text("# FAQ\n\nQuestions people ask us often.\n\n## Why\n\nBecause it is simpler that way.\n", encoding="utf-8")
    (root / "guide" / "usage.md").write_text("# Usage\n\nRun the command in a terminal.\n", encoding="utf-8")
    return root


@POOLED
def test_prune_deletes_what_the_sources_no_longer_hold_and_nothing_else(sim, database_url, db, docs, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "elsewhere", "title": "Other", "content": "from another file"}) + "\n")
    assert sections_cli("ingest", docs, *embedding(sim, database_url)).returncode == 0
    assert sections_cli("ingest", other, *embedding(sim, database_url)).returncode == 0
    assert sections_cli("ingest", docs, *embedding(sim, database_url), "--collection", "mirror").returncode == 2
    stored = ids(db, "default")
    assert {"intro.md#intro/old-feature", "faq.md#faq/why", "guide/usage.md#usage", "elsewhere"} <= stored

    # a heading deleted from one page, a whole page deleted
    intro = docs / "intro.md"
    intro.write_text(intro.read_text().split("## Old feature")[0], encoding="utf-8")
    (docs / "faq.md").unlink()
    gone = {section_id for section_id in stored if section_id.startswith("faq.md")} | {"intro.md#intro/old-feature"}

    before = sim.stats()["inputs"]
    dry = sections_cli("ingest", docs, *embedding(sim, database_url), "--prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert set(report["prune_ids"]) == gone and report["would_prune"] == len(gone)
    assert ids(db, "default") == stored and sim.stats()["inputs"] == before  # nothing deleted, nothing sent

    text = sections_cli("ingest", docs, *embedding(sim, database_url), "--prune", "--dry-run")
    assert "would prune: intro.md#intro/old-feature" in text.stdout

    pruned = sections_cli("ingest", docs, *embedding(sim, database_url), "--prune", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["pruned"] == len(gone)
    assert ids(db, "default") == stored - gone
    assert not (gone & vectors(db))
    assert "elsewhere" in ids(db, "default")  # another source: never a candidate

    hits = json.loads(sections_cli("search", "This feature is going away.", *embedding(sim, database_url),
                                   "--json").stdout)["hits"]
    assert "intro.md#intro/old-feature" not in {hit["id"] for hit in hits}
    again = sections_cli("ingest", docs, *embedding(sim, database_url), "--prune", "--json")
    assert json.loads(again.stdout)["pruned"] == 0


def test_prune_from_stdin_is_refused_and_invalid_inputs_skip_the_prune(sim, database_url, db, docs, tmp_path):
    assert "stdin" in one_line_error(sections_cli("ingest", "-", *embedding(sim, database_url), "--prune",
                                                  stdin='{"id": "a", "content": "x"}\n'))
    records = tmp_path / "records"
    records.mkdir()
    (records / "a.jsonl").write_text('{"id": "r1", "content": "one"}\n{"id": "r2", "content": "two"}\n')
    assert sections_cli("ingest", records, *embedding(sim, database_url)).returncode == 0
    (records / "a.jsonl").write_text('{"id": "r1", "content": "one"}\n{"id": "r2", "content": broken\n')
    result = sections_cli("ingest", records, *embedding(sim, database_url), "--prune", "--skip-invalid")
    assert "--prune skipped" in result.stderr
    assert ids(db) == {"r1", "r2"}  # r2's line is broken, not gone: it is kept


@POOLED
def test_collections_keep_searches_and_syncs_apart(sim, database_url, db, tmp_path):
    docs, python = tmp_path / "docs.jsonl", tmp_path / "python.jsonl"
    docs.write_text(json.dumps({"id": "d1", "title": "Lists", "content": "how to sort a list"}) + "\n")
    python.write_text(json.dumps({"id": "p1", "title": "Lists", "content": "how to sort a list"}) + "\n")
    assert sections_cli("ingest", docs, *embedding(sim, database_url), "-c", "docs").returncode == 0
    assert sections_cli("ingest", python, *embedding(sim, database_url), "-c", "python").returncode == 0
    query = "Lists\n\nhow to sort a list"
    found = lambda *extra: {hit["id"] for hit in json.loads(  # noqa: E731
        sections_cli("search", query, *embedding(sim, database_url), "--json", *extra).stdout)["hits"]}
    assert found("-c", "docs") == {"d1"} and found("-c", "python") == {"p1"}
    assert found() == set()  # the default collection is empty
    assert found("--all-collections") == {"d1", "p1"}

    # the same id in another collection is refused, not moved
    clash = sections_cli("ingest", docs, *embedding(sim, database_url), "-c", "python", "--json")
    assert clash.returncode == 2
    assert "stored in collection 'docs'" in json.loads(clash.stdout)["failure_reasons"][0]["reason"]
    assert ids(db, "docs") == {"d1"}

    db.execute("update sections set content = 'changed' where id in ('d1', 'p1')")
    before = sim.stats()["inputs"]
    synced = json.loads(sections_cli("sync", *embedding(sim, database_url), "-c", "docs", "--json").stdout)
    assert synced["embedded"] == 1 and sim.stats()["inputs"] == before + 1
    status = json.loads(sections_cli("status", "--database-url", database_url, "--json").stdout)
    assert status["collections"] == {"docs": 1, "python": 1}
    assert status["models"][MODEL]["collections"]["python"]["stale"] == 1
    assert status["models"][MODEL]["collections"]["docs"]["stale"] == 0


def test_sync_dry_run_lists_what_is_due_and_its_cost_and_sends_nothing(sim, database_url, db, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "content": f"section number {i}"}) + "\n" for i in range(30)))
    assert sections_cli("ingest", path, *embedding(sim, database_url)).returncode == 0
    db.execute("update sections set content = content || ' edited' where id in ('s1', 's2', 's3')")
    db.execute("insert into sections (id, title, content) values ('new', '', 'added by plain SQL')")
    before = sim.stats()["inputs"]
    dry = sections_cli("sync", *embedding(sim, database_url), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["would_embed"] == 4 and report["tokens"] > 0 and "estimated_cost_usd" in report
    text = sections_cli("sync", *embedding(sim, database_url), "--dry-run")
    assert "due: new" in text.stdout and "estimated cost" in text.stdout
    assert sim.stats()["inputs"] == before
    assert json.loads(sections_cli("sync", *embedding(sim, database_url), "--json").stdout)["embedded"] == 4


@POOLED
def test_delete_by_id_prefix_source_and_whole_collection(sim, database_url, db, docs):
    assert sections_cli("ingest", docs, *embedding(sim, database_url)).returncode == 0
    assert sections_cli("ingest", docs / "guide", *embedding(sim, database_url), "-c", "kept").returncode == 0
    everything = ids(db, "default")
    db_url = ["--database-url", database_url]

    refused = sections_cli("delete", "faq.md#faq", *db_url)  # no terminal to ask on, no --yes
    assert "--yes" in one_line_error(refused) and ids(db, "default") == everything
    assert "say what to delete" in one_line_error(sections_cli("delete", *db_url))

    by_id = json.loads(sections_cli("delete", "faq.md#faq", "no-such-id", "--yes", "--json", *db_url).stdout)
    assert by_id == {"collection": "default", "sections": 1, "vectors": 1}
    by_prefix = sections_cli("delete", "--prefix", "intro.md#", "--yes", *db_url)
    assert by_prefix.returncode == 0 and "deleted 3 section(s) and 3 vector(s)" in by_prefix.stdout
    by_source = json.loads(sections_cli("delete", "--source", docs / "guide", "-y", "--json", *db_url).stdout)
    assert by_source["sections"] == 1
    assert ids(db, "default") == everything - {"faq.md#faq", "intro.md#intro", "intro.md#intro/install",
                                                "intro.md#intro/old-feature", "guide/usage.md#usage"}
    nothing = sections_cli("delete", "--prefix", "zzz", "--yes", *db_url)
    assert nothing.returncode == 0 and "nothing deleted" in nothing.stdout
    whole = json.loads(sections_cli("delete", "--whole-collection", "--yes", "--json", *db_url).stdout)
    assert whole["sections"] == len(everything) - 5
    assert ids(db, "default") == set() and ids(db, "kept") == {"usage.md#usage"}  # another collection: untouched


@POOLED
def test_drop_model_takes_its_vectors_failures_and_indexes(sim, database_url, db, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "content": f"section {i}"}) + "\n" for i in range(20))
                    + json.dumps({"id": "poisoned", "content": "POISON"}) + "\n")
    sim.configure(poison=["POISON"])
    assert sections_cli("ingest", path, *embedding(sim, database_url)).returncode == 2
    assert sections_cli("index", "--model", MODEL, "--database-url", database_url).returncode == 0
    typo = one_line_error(sections_cli("drop-model", "text-embedding-3-smal", "--yes", "--database-url", database_url))
    assert "nothing stored for model 'text-embedding-3-smal'" in typo and MODEL in typo
    dropped = sections_cli("drop-model", MODEL, "--yes", "--json", "--database-url", database_url)
    assert json.loads(dropped.stdout) | {"indexes": 1} == {"model": MODEL, "vectors": 20, "failures": 1, "indexes": 1}
    assert len(json.loads(dropped.stdout)["indexes"]) == 1
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == 0
    assert db.execute("select count(*) from embedding_failures").fetchone()[0] == 0
    assert db.execute("select count(*) from pg_indexes where indexname like 'section_embeddings_hnsw%'").fetchone()[0] == 0
    status = json.loads(sections_cli("status", "--database-url", database_url, "--json").stdout)
    assert status["models"] == {} and status["collections"] == {"default": 21}


@POOLED
def test_three_concurrent_ingests_of_one_folder_pay_once(sim, database_url, db, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for part in range(3):
        (folder / f"part{part}.jsonl").write_text("".join(
            json.dumps({"id": f"p{part}-{i}", "content": f"part {part} section {i} " + "words " * 20}) + "\n"
            for i in range(200)))
    sim.configure(latency_base=5.0)  # the first run's requests are still in flight when the others start
    command = [sys.executable, "-m", "sections.cli.app", "ingest", str(folder), *embedding(sim, database_url), "--json",
               "--concurrency", "2"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OPENAI_API_KEY": "sk-test"}) for _ in range(3)]
    results = [run.communicate(timeout=180) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in results]
    summaries = [json.loads(out) for out, _ in results]
    assert sim.stats()["inputs"] == 600  # every section embedded once, whatever ran at once
    assert sum(summary["embedded"] for summary in summaries) == 600
    assert all(summary["busy"] == 0 for summary in summaries)  # exit 0 means done: each waited for the others
    assert len(vectors(db)) == 600
    assert db.execute("select count(*) from section_leases").fetchone()[0] == 0
    assert db.execute("select count(*) from section_workers").fetchone()[0] == 0


def test_drop_model_waits_for_its_batch_jobs_to_be_collected(sim, database_url, db, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "s", "content": "one section"}) + "\n")
    assert sections_cli("ingest", path, *embedding(sim, database_url)).returncode == 0
    db.execute("insert into section_batch_jobs (id, model_name, endpoint, requests, inputs, sections, tokens) "
               "values (gen_random_uuid(), %s, 'http://x/v1', 1, 1, 1, 3)", (MODEL,))
    refused = one_line_error(sections_cli("drop-model", MODEL, "--yes", "--database-url", database_url))
    assert "not collected yet" in refused
    assert db.execute("select count(*) from section_embeddings").fetchone() == (1,)  # nothing dropped
    db.execute("update section_batch_jobs set collected_at = now()")
    assert sections_cli("drop-model", MODEL, "--yes", "--database-url", database_url).returncode == 0
    assert db.execute("select count(*) from section_batch_jobs").fetchone() == (0,)
