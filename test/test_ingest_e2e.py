"""Ingest end to end: the real engine, the simulator over HTTP, the embedded Postgres.

Every stored vector is compared with the simulator's deterministic vector for its own section's
text, so a vector stored against the wrong section cannot pass. Every test runs twice: straight to
the embedded server and through pgbouncer in transaction mode (test/fixtures_pgbouncer.py).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sections.engine.dispatch import RetryPolicy
from core.embedding_service import EmbeddingService
from sections.engine.errors import ProviderFatalError
from sections.postgres.index import index_name
from sections.reading.sample_corpus import stdlib_sections
from sections.simulator.server import expected_embedding
from core.supabase_store import SupabaseStore, section_text
from fixtures_db import nested_plans
from fixtures_pgbouncer import POOLED

pytestmark = POOLED  # each test twice: straight to the server, and through pgbouncer in transaction mode

DIMS = 64  # small vectors keep the tests fast; the write path is the same for any size


@pytest.fixture(scope="module")
def sections():
    return stdlib_sections(600, tokens_per_section=120)


def engine(sim, **options) -> EmbeddingService:
    options.setdefault("dimensions", DIMS)
    return EmbeddingService(api_key="test", base_url=sim.base_url, retry=RetryPolicy(backoff_base_s=0.01), **options)


def assert_every_vector_is_its_own(store, db, sections, model="text-embedding-3-small", dims=DIMS, only=False):
    """Each section's stored vector is the simulator's vector of that section's text; with
    ``only=False`` no other section has a vector."""
    rows = dict(db.execute("select section_id, embedding::real[] from section_embeddings where model_name = %s",
                           (model,)).fetchall())
    by_id = {s["id"]: s for s in sections}
    assert set(by_id) <= set(rows) if only else set(rows) == set(by_id)
    for section_id, s in by_id.items():
        stored = rows[section_id]
        expected = expected_embedding(section_text(s["title"], s["content"]), model, dims)
        assert np.allclose(np.asarray(stored, dtype=np.float32), expected, atol=1e-6), section_id


def test_every_stored_vector_is_its_own_sections_even_with_shuffled_replies(sim, store, db, sections):
    sim.configure(shuffle=True)
    result = store.batch_ingest_embeddings(sections, engine(sim))
    assert result["success_count"] == len(sections) and result["failed_count"] == 0
    assert result["total_tokens"] == sim.stats()["tokens"] > 0
    assert_every_vector_is_its_own(store, db, sections)


def test_a_rerun_embeds_nothing_and_an_edit_re_embeds_exactly_the_edited(sim, store, db, sections):
    store.ingest(sections, engine(sim))
    sim.reset()
    rerun = store.ingest(sections, engine(sim))
    assert rerun["skipped_count"] == len(sections) and rerun["success_count"] == 0
    assert rerun["total_tokens"] == 0 and sim.stats()["requests"] == 0

    edited = [dict(s) for s in sections]
    for s in edited[100:110]:
        s["content"] += " (edited)"
    sim.reset()
    result = store.ingest(edited, engine(sim))
    assert result["success_count"] == 10 and result["skipped_count"] == len(sections) - 10
    assert sim.stats()["inputs"] == 10
    assert_every_vector_is_its_own(store, db, edited)


def test_a_failing_section_is_recorded_then_cleared_on_success(sim, store, db, sections):
    poisoned = [dict(s) for s in sections[:200]]
    poisoned[42]["content"] += " POISON-PILL"
    sim.configure(poison=["POISON-PILL"])
    result = store.ingest(poisoned, engine(sim))
    bad_id = poisoned[42]["id"]
    assert result["failed_ids"] == [bad_id] and "400" in result["errors"][bad_id]
    assert db.execute("select reason, attempts from embedding_failures").fetchall()[0][1] == 1
    assert_every_vector_is_its_own(store, db, [s for s in poisoned if s["id"] != bad_id])

    result = store.ingest(poisoned, engine(sim))  # still poisoned: the attempt is counted
    assert db.execute("select attempts from embedding_failures").fetchone()[0] == 2

    sim.configure(poison=[])
    result = store.ingest(poisoned, engine(sim))
    assert result["success_count"] == 1 and result["skipped_count"] == 199
    assert db.execute("select count(*) from embedding_failures").fetchone()[0] == 0
    assert_every_vector_is_its_own(store, db, poisoned)


def test_quota_exhausted_mid_run_keeps_what_arrived_and_a_rerun_finishes(sim, store, db, sections):
    sim.configure(quota_tokens=40_000)  # requests are ~32k tokens here: the first fits, the next does not
    with pytest.raises(ProviderFatalError) as caught:
        store.ingest(sections, engine(sim, concurrency=2), chunk_size=100)
    partial = caught.value.result
    stored = db.execute("select count(*) from section_embeddings").fetchone()[0]
    assert 0 < partial["success_count"] == stored < len(sections)
    assert db.execute("select count(*) from embedding_failures").fetchone()[0] == 0  # nothing false recorded

    sim.configure(quota_tokens=None)
    sim.reset()
    result = store.ingest(sections, engine(sim))
    assert result["skipped_count"] == stored and result["success_count"] == len(sections) - stored
    assert_every_vector_is_its_own(store, db, sections)


def test_hostile_ids_and_titles_through_the_whole_path(sim, store, db):
    hostile = [
        {"id": "'); DROP TABLE sections; --", "title": "Robert'); DROP TABLE", "content": "little bobby tables"},
        {"id": "ünïcödé ✓ 漢字 🚀", "title": "\"quoted\" \\ back", "content": "unicode all the way ✓"},
        {"id": "%s %(x)s {} $1", "title": "", "content": "format strings in ids"},
        {"id": "big", "title": "one megabyte", "content": ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000]},
    ]
    result = store.ingest(hostile, engine(sim))
    assert result["success_count"] == 4
    rows = {r[0]: r[1:] for r in db.execute("select id, title, content from sections")}
    for s in hostile:
        assert rows[s["id"]] == (s["title"], s["content"])
    assert_every_vector_is_its_own(store, db, hostile[:3], only=True)  # the 1 MB one is an average of pieces


def test_search_returns_the_expected_nearest_section(sim, store, sections):
    service = engine(sim)
    store.ingest(sections, service, build_index=True)
    target = sections[123]
    hits = store.search(section_text(target["title"], target["content"]), service, k=5)
    assert hits[0]["id"] == target["id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 5 and hits[0]["score"] > hits[1]["score"]


WIDE_MODEL, WIDE_DIMS = "text-embedding-3-large", 3072  # over pgvector's 2,000 for `vector`: indexed as halfvec


def _without_vectors(plan: str) -> str:
    """A plan readable in a failure message: the 3,072 numbers of each vector literal left out."""
    return re.sub(r"'\[[^\]]*\]'", "'[…]'", plan)


def test_3072_dimensions_are_indexed_as_halfvec_and_searched_through_that_index(sim, database_url, db, tmp_path):
    # 1,000 rows: below a few hundred an exact scan is cheaper, and the planner rightly picks it
    wide = stdlib_sections(1000, tokens_per_section=20)
    path = tmp_path / "wide.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in wide), encoding="utf-8")
    cli = [sys.executable, "-m", "sections.cli.app"]
    where = ["--model", WIDE_MODEL, "--database-url", database_url]

    ingested = subprocess.run([*cli, "ingest", str(path), *where, "--base-url", sim.base_url, "--json"],
                              capture_output=True, text=True, timeout=180, check=False)
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["embedded"] == len(wide)
    assert db.execute("select array_agg(distinct dimensions) from section_embeddings").fetchone()[0] == [WIDE_DIMS]
    assert_every_vector_is_its_own(None, db, wide, model=WIDE_MODEL, dims=None)

    name = index_name(WIDE_MODEL, WIDE_DIMS)
    indexed = subprocess.run([*cli, "index", *where], capture_output=True, text=True, timeout=180, check=False)
    assert indexed.returncode == 0 and name in indexed.stdout, indexed.stderr
    definition = db.execute("select indexdef from pg_indexes where indexname = %s", (name,)).fetchone()[0]
    assert f"halfvec({WIDE_DIMS})" in definition and "halfvec_cosine_ops" in definition, definition

    target = wide[42]
    text = section_text(target["title"], target["content"])
    found = subprocess.run([*cli, "search", text, "-k", "3", "--json", *where, "--base-url", sim.base_url],
                           capture_output=True, text=True, timeout=120, check=False)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["id"] == target["id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)  # halfvec precision

    # match_sections(), which the store's own search calls too, runs on the halfvec index, not a scan of every row
    db.execute("analyze section_embeddings")  # the statistics autovacuum gathers after a load
    query = expected_embedding(text, WIDE_MODEL)
    rows, plans = nested_plans(db, "select id from match_sections(%s, 3, %s)", (query, WIDE_MODEL))
    assert rows[0][0] == target["id"]
    assert f"Index Scan using {name}" in plans and f"halfvec({WIDE_DIMS})" in plans, _without_vectors(plans)


SYNC_WORKER = textwrap.dedent("""
    import json, sys
    from sections.engine.dispatch import RetryPolicy
    from core.embedding_service import EmbeddingService
    from core.supabase_store import SupabaseStore
    database_url, base_url = sys.argv[1], sys.argv[2]
    service = EmbeddingService(api_key="test", base_url=base_url, dimensions=64, concurrency=4)
    with SupabaseStore(database_url) as store:
        print(json.dumps(store.sync(service, claim_batch=50)))
""")


def test_two_sync_processes_at_once_embed_every_section_exactly_once(sim, database_url, db, sections):
    with SupabaseStore(database_url) as store:
        store.upsert_sections(sections)
    sim.configure(latency_base=0.02)
    workers = [subprocess.Popen([sys.executable, "-c", SYNC_WORKER, database_url, sim.base_url],
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs

    counts = [json.loads(out.strip().splitlines()[-1])["success_count"] for out in outputs]
    stats = sim.stats()
    assert sum(counts) == len(sections) and all(c > 0 for c in counts)  # both worked, none twice
    assert stats["embedded_inputs_total"] == stats["distinct_inputs"] == len(sections)
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == len(sections)
