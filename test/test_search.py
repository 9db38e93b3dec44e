"""Search people expect: metadata, collection and source filters, hybrid (full text + vector by
reciprocal rank fusion), whole contents, through the Python API, the SQL functions a Supabase
client calls, and the ``sections search`` command as a subprocess; and a selective filter that
still returns k hits through the HNSW index (pgvector 0.8's iterative scan).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psycopg
import pytest

from typer.testing import CliRunner

from sections.cli.app import app
from sections.postgres.index import index_name
from sections.records import SearchFilter, Section
from core.supabase_store import section_text
from fixtures_db import nested_plans

DIMS = 24
UNIQUE_WORD = "zanzibarite"  # in one section's content only


def _vectors(n: int, seed: int = 5) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIMS)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def loaded(store):
    """60 sections with known vectors: bucket i % 6, tags, sources under /x/docs and /x/docs2, a
    second collection, and one section (s47) whose content alone holds ``UNIQUE_WORD``."""
    vectors = _vectors(60)
    sections = [Section(f"s{i}", f"Title {i}", f"body of section {i} " * 30 + (UNIQUE_WORD if i == 47 else ""),
                        {"bucket": i % 6, "tags": ["a", "b"] if i % 2 else ["a"], "draft": i % 5 == 0},
                        source=f"/x/{'docs' if i < 30 else 'docs2'}/page{i % 3}.md") for i in range(50)]
    store.upsert_sections(sections)
    store.upsert_sections([Section(f"o{i}", f"Other {i}", f"other collection {i}") for i in range(50, 60)],
                          collection="other")
    store.write_embeddings("m", [(f"s{i}", vectors[i]) for i in range(50)] +
                           [(f"o{i}", vectors[i]) for i in range(50, 60)])
    return vectors


def _ids(hits) -> list[str]:
    return [hit["id"] for hit in hits]


def test_metadata_filters_are_jsonb_containment(store, loaded):
    query = loaded[3]
    hits = store.search_by_vector(query, "m", k=5, filter={"bucket": 3})
    assert _ids(hits)[0] == "s3" and len(hits) == 5
    assert all(hit["metadata"]["bucket"] == 3 for hit in hits)
    assert {hit["id"] for hit in store.search_by_vector(query, "m", k=50, filter={"bucket": 3})} == \
        {f"s{i}" for i in range(50) if i % 6 == 3}
    odd = store.search_by_vector(query, "m", k=50, filter={"tags": ["b"]})  # a list holds the items asked for
    assert {hit["id"] for hit in odd} == {f"s{i}" for i in range(1, 50, 2)}
    both = store.search_by_vector(query, "m", k=50, filter=SearchFilter({"bucket": 3, "draft": False}))
    assert {hit["id"] for hit in both} == {f"s{i}" for i in range(50) if i % 6 == 3 and i % 5}
    assert store.search_by_vector(query, "m", k=5, filter={"bucket": "3"}) == []  # a string is not a number
    assert _ids(store.search_by_vector(query, "m", k=5, filter={})) == _ids(store.search_by_vector(query, "m", k=5))


def test_collection_and_source_filters(store, loaded):
    query = loaded[55]
    assert _ids(store.search_by_vector(query, "m", k=1, collection="other")) == ["s55".replace("s", "o")]
    assert "o55" not in _ids(store.search_by_vector(query, "m", k=60))  # the default collection only
    assert "o55" == _ids(store.search_by_vector(query, "m", k=1, collection=None))[0]

    folder = store.search_by_vector(query, "m", k=60, filter=SearchFilter(sources=("/x/docs",)))
    assert {hit["id"] for hit in folder} == {f"s{i}" for i in range(30)}  # not /x/docs2, a sibling that shares the prefix
    file = store.search_by_vector(query, "m", k=60, filter=SearchFilter(sources=("/x/docs2/page1.md", "/x/docs/")))
    assert {hit["id"] for hit in file} == {f"s{i}" for i in range(50) if i < 30 or i % 3 == 1}


def test_full_content_and_hybrid_ranking(store, loaded):
    query = loaded[3]
    short = store.search_by_vector(query, "m", k=3)
    assert "content" not in short[0] and len(short[0]["snippet"]) <= 240
    full = store.search_by_vector(query, "m", k=3, full=True)
    assert full[0]["content"] == store.get_section("s3")["content"] and len(full[0]["content"]) > 240

    plain = _ids(store.search_by_vector(query, "m", k=5))
    assert "s47" not in plain  # far from the query's vector ...
    hybrid = store.search_by_vector(query, "m", k=5, text=UNIQUE_WORD)
    assert "s47" in _ids(hybrid)  # ... but the only section holding the word: first on the full-text side
    assert "s47" not in _ids(store.search_by_vector(query, "m", k=5, text=f"{UNIQUE_WORD} lanterns"))  # every word
    assert "s47" in _ids(store.search_by_vector(query, "m", k=5, text=f"{UNIQUE_WORD} or lanterns"))  # or either
    assert "s3" in _ids(hybrid)  # first by meaning
    scores = [hit["rrf_score"] for hit in hybrid]
    assert scores == sorted(scores, reverse=True)
    s47 = next(hit for hit in hybrid if hit["id"] == "s47")
    assert s47["score"] == pytest.approx(float(loaded[47] @ query), abs=1e-5)  # its cosine similarity, all the same
    only_stop_words = store.search_by_vector(query, "m", k=5, text="the and of")
    assert _ids(only_stop_words) == plain  # no full-text side: the vector ranking alone
    assert store.search_by_vector(query, "m", k=5, text=UNIQUE_WORD, filter={"bucket": 3})[0]["id"] == "s3"
    assert "s47" not in _ids(store.search_by_vector(query, "m", k=5, text=UNIQUE_WORD, filter={"bucket": 3}))


def test_a_megabyte_of_distinct_words_is_stored_and_found_by_its_head(store, db):
    # a tsvector holds at most 1 MB: the full-text column reads the first 100,000 characters only,
    # so such a section is stored like any other instead of failing its write batch
    words = [f"{i:08x}" for i in range(120_000)]
    store.upsert_sections([{"id": "huge", "title": "Huge", "content": " ".join(words)}])
    store.write_embeddings("m", [("huge", _vectors(1)[0])])
    assert _ids(store.search_by_vector(_vectors(2)[1], "m", k=1, text=words[10])) == ["huge"]
    assert db.execute("select fts @@ %s::tsquery, fts @@ %s::tsquery from sections", (words[10], words[-1])).fetchone() \
        == (True, False)


def test_bad_filters_are_refused_before_any_query(store, loaded):
    for bad in ({"x": float("nan")}, SearchFilter(metadata=["a"]), {1: "a"}, SearchFilter(sources=("",)),
                {"x": "nul\x00"}):
        with pytest.raises(ValueError):
            store.search_by_vector(loaded[0], "m", k=3, filter=bad)


def test_the_sql_functions_as_a_supabase_client_calls_them(store, loaded, db):
    text = "[" + ",".join(repr(float(x)) for x in loaded[3]) + "]"  # a client sends the vector as text
    rows = db.execute(
        "select id, metadata from match_sections(query_embedding => %s::vector, match_count => 4, model_name => 'm', "
        "filter => %s, collection => 'default', sources => array['/x/docs'])",
        (text, json.dumps({"bucket": 3}))).fetchall()
    assert [r[0] for r in rows] == ["s3", "s9", "s15", "s21"][:len(rows)] or rows[0][0] == "s3"
    assert len(rows) == 4 and all(r[1]["bucket"] == 3 and int(r[0][1:]) < 30 for r in rows)
    assert db.execute("select count(*) from match_sections(%s::vector, 100, 'm')", (text,)).fetchone()[0] == 60

    hybrid = db.execute(
        "select id, similarity, rrf_score from hybrid_match_sections(query_text => %s, query_embedding => %s::vector, "
        "match_count => 5, model_name => 'm', collection => 'default')", (UNIQUE_WORD, text)).fetchall()
    assert {"s3", "s47"} <= {r[0] for r in hybrid} and hybrid[0][2] >= hybrid[-1][2]
    full_text_only = db.execute("select id from hybrid_match_sections(%s, %s::vector, 5, 'm', semantic_weight => 0)",
                                (UNIQUE_WORD, text)).fetchall()
    assert full_text_only[0][0] == "s47"
    with pytest.raises(psycopg.errors.RaiseException, match="must be a JSON object"):
        db.execute("select * from match_sections(%s::vector, 3, 'm', '[1]')", (text,))


def test_a_one_percent_filter_returns_k_hits_through_the_hnsw_index(store, db):
    n = 30_000  # below ~15,000 rows the planner rightly prefers filtering first and sorting the few
    vectors = _vectors(n, seed=8)
    db.execute("insert into sections (id, title, content, metadata) select 'v' || i, '', 'row ' || i, "
               "jsonb_build_object('bucket', i %% 100) from generate_series(0, %s) i", (n - 1,))
    store.write_embeddings("m", [(f"v{i}", vectors[i]) for i in range(n)])
    store.build_index("m", m=8, ef_construction=32)  # a small graph builds fast; recall is not the point here
    db.execute("analyze sections")
    db.execute("analyze section_embeddings")
    query = _vectors(1, seed=99)[0]

    rows, plans = nested_plans(db, "select id from match_sections(%s, 10, 'm', '{\"bucket\": 7}', 'default')", (query,))
    assert len(rows) == 10 and all(int(r[0][1:]) % 100 == 7 for r in rows)
    assert f"Index Scan using {index_name('m', DIMS)}" in plans, plans
    hits = store.search_by_vector(query, "m", k=10, group=False, filter={"bucket": 7})
    assert _ids(hits) == [r[0] for r in rows]

    # without the iterative scan the same index scan stops at ef_search candidates: about one passes
    with db.transaction():
        db.execute("set local hnsw.iterative_scan = off")
        plain_scan = db.execute(
            f"select s.id from section_embeddings e join sections s on s.id = e.section_id "
            f"where e.model_name = 'm' and e.dimensions = {DIMS} and s.metadata @> '{{\"bucket\": 7}}' "
            f"order by e.embedding::vector({DIMS}) <=> %s::vector({DIMS}) limit 10", (query,)).fetchall()
    assert len(plain_scan) < 10


# -- the command --------------------------------------------------------------------------------------


runner = CliRunner()


def sections_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sections.cli.app", *map(str, args)], capture_output=True, text=True,
                          input="", timeout=120)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for folder, name, lang, level in (("guide", "install", "en", 1), ("guide", "usage", "en", 2),
                                      ("guide2", "autre", "fr", 2)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"{name}.md").write_text(textwrap.dedent(f"""\
            ---
            lang: {lang}
            level: {level}
            ---
            # {name.title()}

            The {name} page explains {name} in some detail. {"It goes on and on. " * 20} TAILWORD{name}

            ## More {name}

            Further notes on {name} here.
            """), encoding="utf-8")
    (tmp_path / "notes.jsonl").write_text(
        json.dumps({"id": "n1", "title": "Odd note", "content": f"a note about {UNIQUE_WORD} crystals",
                    "metadata": {"lang": "en", "draft": False}}) + "\n"
        + "".join(json.dumps({"id": f"n{i}", "title": f"Note {i}", "content": f"note number {i} on other things",
                              "metadata": {"lang": "en", "draft": True}}) + "\n" for i in range(2, 30)),
        encoding="utf-8")
    return root


def test_search_command_filters_sources_full_and_hybrid(sim, database_url, db, corpus):
    where = ["--model", "text-embedding-3-small", "--base-url", sim.base_url, "--database-url", database_url,
             "--dimensions", "32"]
    assert sections_cli("ingest", corpus, corpus.parent / "notes.jsonl", *where).returncode == 0
    title, content = db.execute("select title, content from sections where id = 'guide/install.md#install'").fetchone()
    query = section_text(title, content)

    def found(*extra: object, text: str = query, subprocess: bool = False) -> list[dict]:
        """Hits as --json prints them: from a real subprocess, or (the many variations) in-process."""
        args = ["search", text, *where, "--json", "-k", "50", *map(str, extra)]
        result = sections_cli(*args) if subprocess else runner.invoke(app, args, catch_exceptions=False)
        assert (result.returncode if subprocess else result.exit_code) == 0, result.stdout
        return json.loads(result.stdout)["hits"]

    english = found("--filter", "lang=en", "--source", corpus / "guide", subprocess=True)
    assert english[0]["id"] == "guide/install.md#install"
    assert {h["metadata"]["source"] for h in english} == {"guide/install.md", "guide/usage.md"}  # not guide2/
    assert {h["id"] for h in found("--filter", "lang=fr")} == {"guide2/autre.md#autre", "guide2/autre.md#autre/more-autre"}
    assert {h["metadata"]["source"] for h in found("--filter", "level=2")} == {"guide/usage.md", "guide2/autre.md"}
    assert found("--filter", 'level="2"') == []  # JSON: the string "2" is not the number 2
    assert {h["id"] for h in found("--filter", "draft=false")} == {"n1"}
    assert {h["id"] for h in found("--filter", "lang=en", "--filter", "draft=false")} == {"n1"}
    one_file = found("--source", corpus / "guide" / "usage.md")
    assert {h["metadata"]["source"] for h in one_file} == {"guide/usage.md"}
    assert {h["id"] for h in found("--source", corpus.parent / "notes.jsonl")} == {f"n{i}" for i in range(1, 30)}

    assert "content" not in english[0]
    whole = found("--full")
    assert whole[0]["content"] == content and "TAILWORDinstall" in content and "TAILWORDinstall" not in whole[0]["snippet"]
    table = sections_cli("search", query, *where, "--full", "-k", "1")
    assert table.returncode == 0 and "TAILWORDinstall" in table.stdout

    plain = found(text=f"{UNIQUE_WORD} crystals")
    hybrid = found("--hybrid", text=f"{UNIQUE_WORD} crystals", subprocess=True)
    assert plain[0]["id"] != "n1" and hybrid[0]["id"] == "n1" and "rrf_score" in hybrid[0]
    assert "rrf" in runner.invoke(app, ["search", UNIQUE_WORD, *where, "--hybrid", "-k", "2"]).stdout

    nothing = runner.invoke(app, ["search", query, *where, "--filter", "lang=de"])
    assert nothing.exit_code == 0 and "passes --filter/--source" in nothing.stdout
    refused = sections_cli("search", query, *where, "--filter", "lang")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == ["error: --filter 'lang': expected KEY=VALUE, e.g. --filter lang=en"]
    for bad in (["--filter", "=en"], ["--filter", "a=1", "--filter", "a=2"]):
        result = runner.invoke(app, ["search", query, *where, *bad])
        assert result.exit_code == 1 and "--filter" in result.output, result.output
