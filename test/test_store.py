"""SupabaseStore against a real embedded Postgres + pgvector (a fresh database per test).

The ingest tests drive the store with ``FakeStreamingEmbedder`` (``test/fake_embedder.py``), a tiny
deterministic stand-in for ``EmbeddingService.stream_embeddings``.
"""
from __future__ import annotations

import threading
import uuid

import numpy as np
import psycopg
import pytest

from sections.engine.errors import ProviderFatalError
from sections.postgres.schema import MIGRATION_LOCK_KEY, apply_migrations, migrations
from core.supabase_store import SupabaseStore, content_hash, index_name, section_text
from fake_embedder import FakeStreamingEmbedder, StreamedSections
from fixtures_db import nested_plans

HOSTILE_IDS = [
    "plain",
    "it's",
    'double "quoted"',
    "'); DROP TABLE sections; --",
    "back\\slash\\",
    "%s %(x)s {} $1",
    "ünïcödé ✓ 漢字 🚀",
    "rtl \u202e txet",
    "zero\u200bwidth",
    " leading and trailing ",
    "new\nline\ttab",
    "e\u0301 combining",
]


def _sections(n, prefix="s", content="content number {i} with some words"):
    return [{"id": f"{prefix}{i}", "title": f"Title {i}", "content": content.format(i=i)} for i in range(n)]


def _count(db, sql, *params):
    return db.execute(sql, params).fetchone()[0]


# -- schema ------------------------------------------------------------------------------------------


def _fresh_db(embedded_pg):
    name = f"bare_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(embedded_pg.url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    return name


def _drop_db(embedded_pg, name):
    with psycopg.connect(embedded_pg.url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")


def test_migrations_apply_once_and_are_idempotent(embedded_pg):
    name = _fresh_db(embedded_pg)
    try:
        with psycopg.connect(embedded_pg.url_for(name), autocommit=True) as conn:
            first = apply_migrations(conn)
            assert first == [m.name for m in migrations()]
            assert first[0] == "001_init"
            assert apply_migrations(conn) == []
            assert _count(conn, "select count(*) from schema_migrations") == len(first)
            tables = {r[0] for r in conn.execute(
                "select tablename from pg_tables where schemaname = 'public'").fetchall()}
            assert {"sections", "section_embeddings", "embedding_failures", "schema_migrations"} <= tables
            assert conn.execute("select to_regprocedure('match_sections(vector,integer,text,jsonb,text,text[])')").fetchone()[0]
    finally:
        _drop_db(embedded_pg, name)


def test_an_up_to_date_database_is_checked_without_the_migration_lock(database_url):
    """Every start checks the schema: on an up-to-date database that must not queue behind a
    process that holds the migration lock (nor take it, nor run DDL)."""
    with psycopg.connect(database_url, autocommit=True) as holder, \
            psycopg.connect(database_url, autocommit=True) as conn:
        holder.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute("set lock_timeout = '2s'")  # waiting for the lock would fail here
        assert apply_migrations(conn) == []


def test_migrations_are_safe_when_processes_start_at_once(embedded_pg):
    name = _fresh_db(embedded_pg)
    try:
        results, errors = [], []
        barrier = threading.Barrier(4)

        def migrate():
            try:
                with psycopg.connect(embedded_pg.url_for(name), autocommit=True) as conn:
                    barrier.wait()
                    results.append(apply_migrations(conn))
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=migrate) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(len(r) for r in results) == [0, 0, 0, len(migrations())]
        with psycopg.connect(embedded_pg.url_for(name)) as conn:
            assert _count(conn, "select count(*) from schema_migrations") == len(migrations())
    finally:
        _drop_db(embedded_pg, name)


def test_store_on_a_fresh_database_migrates_itself(embedded_pg):
    name = _fresh_db(embedded_pg)
    try:
        with SupabaseStore(embedded_pg.url_for(name)) as store:
            store.upsert_sections([{"id": "a", "title": "t", "content": "c"}])
        with SupabaseStore(embedded_pg.url_for(name)) as store:  # second start: nothing to apply
            assert store.get_section("a")["content"] == "c"
    finally:
        _drop_db(embedded_pg, name)


# -- hashing -----------------------------------------------------------------------------------------


def test_section_text():
    assert section_text("T", "body") == "T\n\nbody"
    assert section_text("", "body") == "body"
    assert section_text(None, "body") == "body"


def test_content_hash_changes_with_everything_that_determines_the_vector():
    base = content_hash("T", "C", "m", None, "average")
    assert len(base) == 16 and isinstance(base, bytes)
    assert base == content_hash("T", "C", "m", None, "average")
    variants = [
        content_hash("T2", "C", "m", None, "average"),
        content_hash("T", "C2", "m", None, "average"),
        content_hash("T", "C", "m2", None, "average"),
        content_hash("T", "C", "m", 256, "average"),
        content_hash("T", "C", "m", None, "truncate"),
        content_hash("", "T\n\nC", "m", None, "average"),  # same embedded text: same vector, same hash
    ]
    assert len(set(variants[:5]) | {base}) == 6
    assert variants[5] == base


def test_content_hash_in_sql_matches_python(db):
    cases = [(t, c, m, d, p) for t, c in [("T", "C"), ("", "only content"), ("ünï 🚀", "'); DROP TABLE x; --"),
                                          ("a\\b", "x" * 100_000)]
             for m, d, p in [("m", None, "average"), ("text-embedding-3-small", 512, "fail")]]
    for title, content, model, dims, policy in cases:
        sql_hash = db.execute("select sections_content_hash(%s, %s, %s, %s, %s)",
                              (title, content, model, dims, policy)).fetchone()[0]
        assert bytes(sql_hash) == content_hash(title, content, model, dims, policy)


# -- sections ----------------------------------------------------------------------------------------


def test_upsert_sections_bulk_dicts_and_objects(store, db):
    class Obj:
        def __init__(self, id, title, content):
            self.id, self.title, self.content = id, title, content

    n = store.upsert_sections(_sections(300) + [Obj("obj-1", "From an object", "body")])
    assert n == 301
    assert _count(db, "select count(*) from sections") == 301
    assert store.get_section("obj-1")["title"] == "From an object"


def test_upsert_sections_updates_only_what_changed(store, db):
    store.upsert_sections([{"id": "a", "title": "t", "content": "c", "metadata": {"k": 1}}])
    before = store.get_section("a")["updated_at"]
    assert store.upsert_sections([{"id": "a", "title": "t", "content": "c"}]) == 0  # unchanged: no write
    assert store.get_section("a")["updated_at"] == before
    assert store.get_section("a")["metadata"] == {"k": 1}  # no metadata given: kept
    store.upsert_sections([{"id": "a", "title": "t", "content": "c2"}, {"id": "a", "title": "t", "content": "c3"}])
    row = store.get_section("a")
    assert row["content"] == "c3" and row["updated_at"] > before and row["metadata"] == {"k": 1}


def test_hostile_ids_titles_and_content_are_stored_verbatim(store, db):
    big = ("€ megabyte " * 100_000)[:1_000_000]
    sections = [{"id": hid, "title": hid, "content": f"{hid} {big if i == 0 else ''}",
                 "metadata": {"note": hid}} for i, hid in enumerate(HOSTILE_IDS)]
    store.upsert_sections(sections)
    assert db.execute("select to_regclass('sections')").fetchone()[0] is not None
    for i, hid in enumerate(HOSTILE_IDS):
        row = store.get_section(hid)
        assert row is not None, hid
        assert row["title"] == hid and row["metadata"] == {"note": hid}
        assert row["content"] == f"{hid} {big if i == 0 else ''}"
    assert len(store.get_section(HOSTILE_IDS[0])["content"]) > 1_000_000


@pytest.mark.parametrize("bad", [
    {"id": "nul\x00id", "title": "t", "content": "c"},
    {"id": "a", "title": "nul \x00 title", "content": "c"},
    {"id": "a", "title": "t", "content": "nul \x00 content"},
    {"id": "a", "title": "t", "content": "lone \ud800 surrogate"},
    {"id": "a", "title": "t", "content": "c", "metadata": {"k": "nul\x00"}},
    {"id": None, "title": "t", "content": "c"},
    {"id": "", "title": "t", "content": "c"},
])
def test_unstorable_sections_are_rejected_not_mangled(store, db, bad):
    with pytest.raises(ValueError):
        store.upsert_sections([{"id": "fine", "title": "t", "content": "c"}, bad])
    assert _count(db, "select count(*) from sections") == 0  # the chunk was not written


# -- the vector writer -------------------------------------------------------------------------------


def test_writer_stores_vectors_verbatim_with_many_dimensions_per_model(store, db):
    rng = np.random.default_rng(1)
    dims_list = [1, 3, 384, 1536, 3072]
    store.upsert_sections(_sections(len(dims_list) * 3))
    rows, expected = [], {}
    for i in range(len(dims_list) * 3):
        d = dims_list[i % len(dims_list)]
        v = rng.standard_normal(d).astype(np.float32)
        v[0] = np.float32(1e-38) if d > 1 else np.float32(-3.4e38)  # extremes survive too
        rows.append((f"s{i}", v, i, bytes([i]) * 16))
        expected[f"s{i}"] = v
    assert store.write_embeddings("model-a", rows) == len(rows)
    # a second model gets its own rows, and a list of floats works as a vector
    store.write_embeddings("model-b", [("s0", [0.5, -0.25, 2.0])])
    for sid, v in expected.items():
        got = store.get_embedding(sid, "model-a")
        assert got.dtype == np.float32 and np.array_equal(got, v), sid
    assert np.array_equal(store.get_embedding("s0", "model-b"), np.array([0.5, -0.25, 2.0], np.float32))
    dims = dict(db.execute("select section_id, dimensions from section_embeddings where model_name = 'model-a'").fetchall())
    assert dims == {sid: v.shape[0] for sid, v in expected.items()}
    tokens, digest = db.execute(
        "select token_count, content_hash from section_embeddings where section_id = 's4' and model_name = 'model-a'"
    ).fetchone()
    assert tokens == 4 and bytes(digest) == bytes([4]) * 16


def test_writer_upserts_and_dedupes_within_a_batch(store, db):
    store.upsert_sections(_sections(3))
    a, b, c = (np.full(4, x, np.float32) for x in (1, 2, 3))
    store.write_embeddings("m", [("s0", a), ("s1", a), ("s0", b)])  # last s0 wins, no "affect row twice"
    assert np.array_equal(store.get_embedding("s0", "m"), b)
    store.write_embeddings("m", [("s0", c)])
    assert np.array_equal(store.get_embedding("s0", "m"), c)
    assert _count(db, "select count(*) from section_embeddings") == 2


def test_writer_rejects_what_pgvector_cannot_store(store, db):
    store.upsert_sections(_sections(2))
    for bad in ([1.0, float("nan")], [float("inf")], np.zeros((2, 2), np.float32), []):
        with pytest.raises(ValueError):
            store.write_embeddings("m", [("s0", np.ones(3, np.float32)), ("s1", bad)])
    with pytest.raises(ValueError, match="do not exist"):
        store.write_embeddings("m", [("s0", np.ones(3, np.float32)), ("nope", np.ones(3, np.float32))])
    assert _count(db, "select count(*) from section_embeddings") == 0


def test_hostile_model_names_are_stored_and_indexed_verbatim(store, db):
    store.upsert_sections(_sections(20))
    rng = np.random.default_rng(2)
    for model in ["'); DROP TABLE section_embeddings; --", 'quote"d', "ünï/🚀", "x" * 300]:
        store.write_embeddings(model, [(f"s{i}", rng.standard_normal(8).astype(np.float32)) for i in range(20)])
        names = store.build_index(model)
        assert names == [index_name(model, 8)] and store.has_index(model, 8)
        hits = store.search_by_vector(store.get_embedding("s3", model), model, k=3)
        assert hits[0]["id"] == "s3"
        assert store.status(model)[model]["embedded"] == 20
    assert _count(db, "select count(distinct model_name) from section_embeddings") == 4


def test_failures_are_recorded_then_cleared_by_success(store, db):
    store.upsert_sections(_sections(3))
    store.record_failures("m", {"s0": "boom", "s1": "bang"})
    store.record_failures("m", [("s0", "boom again")])
    rows = dict((r[0], r[1:]) for r in db.execute(
        "select section_id, reason, attempts from embedding_failures where model_name = 'm'").fetchall())
    assert rows == {"s0": ("boom again", 2), "s1": ("bang", 1)}
    store.record_failures("other-model", {"s0": "different model"})
    store.write_embeddings("m", [("s0", np.ones(4, np.float32))])
    left = db.execute("select section_id, model_name from embedding_failures order by 1, 2").fetchall()
    assert left == [("s0", "other-model"), ("s1", "m")]
    store.record_failures("m", {"ghost": "no such section"})  # nothing to refer to: ignored
    assert _count(db, "select count(*) from embedding_failures where section_id = 'ghost'") == 0


def test_deleting_a_section_cascades(store, db):
    store.upsert_sections(_sections(2))
    store.write_embeddings("m", [("s0", np.ones(4, np.float32)), ("s1", np.ones(4, np.float32))])
    store.record_failures("m2", {"s0": "x"})
    assert store.delete_sections(["s0"]) == 1
    assert _count(db, "select count(*) from section_embeddings") == 1
    assert _count(db, "select count(*) from embedding_failures") == 0


# -- index and search --------------------------------------------------------------------------------


def _load_vectors(store, n=600, dims=32, model="m", seed=3):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dims)).astype(np.float32)
    store.upsert_sections([{"id": f"v{i}", "title": f"T{i}", "content": f"body {i} " * 100} for i in range(n)])
    store.write_embeddings(model, [(f"v{i}", vectors[i]) for i in range(n)])
    return vectors


def _exact(vectors, query, k):
    sims = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    order = np.argsort(-sims)[:k]
    return [f"v{i}" for i in order], sims[order]


def test_search_orders_by_cosine_similarity_and_uses_the_hnsw_index(store, db):
    vectors = _load_vectors(store)
    query = vectors[10] + 0.3 * np.random.default_rng(9).standard_normal(32).astype(np.float32)
    exact_ids, exact_sims = _exact(vectors, query, 5)

    no_index = store.search_by_vector(query, "m", k=5)  # exact (sequential scan)
    assert [h["id"] for h in no_index] == exact_ids
    assert np.allclose([h["score"] for h in no_index], exact_sims, atol=1e-5)

    assert store.build_index("m") == [index_name("m", 32)]
    assert store.build_index("m") == [index_name("m", 32)]  # idempotent
    hits = store.search_by_vector(query, "m", k=5)
    assert hits[0]["id"] == "v10" == exact_ids[0]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert set(hits[0]) == {"id", "title", "score", "snippet", "metadata", "parent"}
    assert hits[0]["parent"] is None  # a whole section, not a chunk
    assert hits[0]["title"] == "T10" and hits[0]["snippet"].startswith("body 10 body 10")
    assert len(hits[0]["snippet"]) <= 240

    _, plan = nested_plans(db, "select id from match_sections(%s, 5, 'm', collection => 'default')", (query,))
    assert f"Index Scan using {index_name('m', 32)}" in plan, plan

    many = store.search_by_vector(query, "m", k=100)  # more than hnsw.ef_search's default of 40
    assert len(many) == 100


def test_search_embeds_the_query_with_the_service(store):
    embedder = FakeStreamingEmbedder(dimensions=16)
    store.ingest(_sections(50), embedder)
    text = section_text("Title 7", "content number 7 with some words")
    hits = store.search(text, embedder, k=3)
    assert hits[0]["id"] == "s7" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert store.search("anything", FakeStreamingEmbedder(model="never-used"), k=3) == []


def test_match_sections_rpc_matches_search_and_uses_the_index(store, db):
    vectors = _load_vectors(store)
    store.build_index("m")
    query = vectors[42]
    rpc = store.match_sections(query, 5, "m")
    direct = store.search_by_vector(query, "m", k=5)
    assert [r["id"] for r in rpc] == [h["id"] for h in direct]
    assert np.allclose([r["similarity"] for r in rpc], [h["score"] for h in direct])
    assert rpc[0]["id"] == "v42" and rpc[0]["content"].startswith("body 42")

    # What a Supabase client sends: the vector as text, arguments by name.
    rows = db.execute(
        "select id, similarity from match_sections(query_embedding => %s::vector, match_count => 3, model_name => %s)",
        ("[" + ",".join(repr(float(x)) for x in query) + "]", "m"),
    ).fetchall()
    assert [r[0] for r in rows] == [r["id"] for r in rpc[:3]]

    # the function's dynamic query goes through the partial HNSW index
    def index_scans():
        db.execute("select pg_stat_force_next_flush()")
        db.execute("select pg_stat_clear_snapshot()")
        return _count(db, "select idx_scan from pg_stat_user_indexes where indexrelname = %s", index_name("m", 32))

    before = index_scans()
    db.execute("select * from match_sections(%s, 5, 'm')", (query,))
    assert index_scans() == before + 1

    assert len(store.match_sections(query, 60, "m")) == 60
    with pytest.raises(psycopg.errors.RaiseException):
        db.execute("select * from match_sections(%s, 5, null)", (query,))


# -- ingest ------------------------------------------------------------------------------------------


def test_ingest_embeds_writes_and_skips_unchanged(store, db):
    embedder = FakeStreamingEmbedder(dimensions=16)
    sections = _sections(250)
    result = store.ingest(iter(sections), embedder, chunk_size=40, write_batch=32)
    assert result["success_count"] == 250 and result["failed_count"] == 0 and result["skipped_count"] == 0
    assert result["failed_ids"] == [] and result["errors"] == {}
    assert result["total_tokens"] == sum(len(section_text(s["title"], s["content"]).split()) for s in sections)
    for s in (sections[0], sections[123], sections[-1]):
        expected = embedder.vector(section_text(s["title"], s["content"]))
        assert np.array_equal(store.get_embedding(s["id"], "fake-model"), expected)  # no section got another's
    stored = db.execute("select content_hash, token_count, requested_dimensions, long_input from section_embeddings "
                        "where section_id = 's5'").fetchone()
    assert bytes(stored[0]) == content_hash("Title 5", "content number 5 with some words", "fake-model", 16, "average")
    assert stored[1:] == (6 + 2, 16, "average")

    again = FakeStreamingEmbedder(dimensions=16)
    result = store.ingest(sections, again)
    assert result["skipped_count"] == 250 and result["success_count"] == 0 and again.embedded == []

    changed = [dict(s) for s in sections]
    changed[3]["content"] = "new words"
    changed[4]["title"] = "New title"
    third = FakeStreamingEmbedder(dimensions=16)
    result = store.ingest(changed, third)
    assert result["success_count"] == 2 and result["skipped_count"] == 248
    assert sorted(third.embedded) == sorted([section_text("Title 3", "new words"),
                                             section_text("New title", "content number 4 with some words")])

    # a different dimension or long-input policy is a different vector: everything re-embeds
    assert store.ingest(sections[:10], FakeStreamingEmbedder(dimensions=8))["success_count"] == 10
    assert store.ingest(sections[:10], FakeStreamingEmbedder(dimensions=8, long_input="truncate"))["success_count"] == 10


def test_ingest_failures_are_recorded_with_reasons_and_do_not_stop_the_run(store, db):
    sections = _sections(30)
    sections[2]["content"] = "   \n "
    sections[5]["content"] = "POISON pill"
    sections[7]["content"] = "bad \x00 byte"
    sections.append({"id": None, "title": "no id", "content": "x"})
    result = store.ingest(sections, FakeStreamingEmbedder())
    assert result["success_count"] == 27
    assert result["failed_count"] == 4
    assert set(result["failed_ids"]) == {"s2", "s5", "s7"}
    assert result["errors"]["s2"] == "empty content"
    assert "poison" in result["errors"]["s5"]
    assert "NUL" in result["errors"]["s7"]
    recorded = dict(db.execute("select section_id, reason from embedding_failures").fetchall())
    assert recorded == {"s2": "empty content", "s5": "rejected by provider: poison"}  # s7 cannot be stored
    assert store.get_section("s7") is None

    sections[5]["content"] = "cured"
    sections[7]["content"] = "clean"
    result = store.ingest(sections[:30], FakeStreamingEmbedder())
    assert result["success_count"] == 2 and result["failed_count"] == 1 and result["skipped_count"] == 27
    recorded = db.execute("select section_id, attempts from embedding_failures").fetchall()
    assert recorded == [("s2", 2)]


def test_ingest_streams_with_bounded_memory(store, db, monkeypatch):
    from sections.postgres import vectors as vector_writer

    sections = StreamedSections(5000)
    writes = []  # (sections read so far, vectors written before this batch)
    original = vector_writer.write_batch

    def spy(conn, settings, successes, failures=()):
        writes.append((sections.pulled, sum(w[2] for w in writes)))
        result = original(conn, settings, successes, failures)
        writes[-1] = writes[-1] + (result.written,)
        return result

    monkeypatch.setattr(vector_writer, "write_batch", spy)
    embedder = FakeStreamingEmbedder(window=100)
    result = store.ingest(sections, embedder, chunk_size=200, write_batch=100, flush_interval=0.05)
    assert result["success_count"] == 5000
    assert _count(db, "select count(*) from section_embeddings") == 5000
    assert embedder.max_held <= 100
    # writing overlaps reading: the first batch is stored long before the input is exhausted ...
    assert writes[0][0] <= 1000 and len(writes) >= 40
    # ... and what has been read but not yet stored stays bounded (chunk + window + queue + batch)
    assert max(read - written for read, written, _ in writes) <= 200 + 100 + 200 + 100 + 100


def test_ingest_on_fatal_error_keeps_what_arrived_and_records_nothing_false(store, db):
    embedder = FakeStreamingEmbedder(window=20, fatal_after=45)
    with pytest.raises(ProviderFatalError) as caught:
        store.ingest(_sections(100), embedder, chunk_size=30, write_batch=1000)
    partial = caught.value.result
    assert partial["success_count"] == 45 and partial["failed_count"] == 0
    assert _count(db, "select count(*) from section_embeddings") == 45
    assert _count(db, "select count(*) from embedding_failures") == 0
    # a rerun picks up exactly the rest
    rerun = FakeStreamingEmbedder()
    result = store.ingest(_sections(100), rerun)
    assert result["skipped_count"] == 45 and result["success_count"] == 55 and len(rerun.embedded) == 55


def test_ingest_builds_the_index_after_a_large_load(store, db):
    store.auto_index_min_rows = 100
    store.ingest(_sections(99), FakeStreamingEmbedder())
    assert not store.has_index("fake-model", 16)
    store.ingest(_sections(120), FakeStreamingEmbedder())
    assert store.has_index("fake-model", 16)
    store.ingest(_sections(5, prefix="x"), FakeStreamingEmbedder(model="other"), build_index=True)
    assert store.has_index("other", 16)


def test_batch_ingest_embeddings_keeps_the_seed_shape(store):
    result = store.batch_ingest_embeddings(_sections(10), FakeStreamingEmbedder(), batch_size=4)
    assert set(result) == {"success_count", "failed_count", "total_tokens", "failed_ids", "skipped_count", "errors"}
    assert result["success_count"] == 10 and result["failed_ids"] == []
    empty = store.batch_ingest_embeddings([], FakeStreamingEmbedder())
    assert empty == {"success_count": 0, "failed_count": 0, "total_tokens": 0, "failed_ids": [],
                     "skipped_count": 0, "errors": {}}
    one = store.ingest_embeddings({"id": "solo", "title": "", "content": "just me"}, FakeStreamingEmbedder())
    assert one["success_count"] == 1


# -- sync --------------------------------------------------------------------------------------------


def test_sync_embeds_missing_and_stale_sections_once(store, db):
    store.upsert_sections(_sections(120))
    embedder = FakeStreamingEmbedder()
    result = store.sync(embedder, claim_batch=25)
    assert result["success_count"] == 120 and len(embedder.embedded) == 120
    assert store.sync(FakeStreamingEmbedder())["success_count"] == 0

    store.upsert_sections([{"id": "s7", "title": "Title 7", "content": "edited"},
                           {"id": "s8", "title": "Title 8", "content": ""}])
    again = FakeStreamingEmbedder()
    result = store.sync(again)
    assert again.embedded == [section_text("Title 7", "edited")]
    assert result["success_count"] == 1 and result["errors"] == {"s8": "empty content"}
    # the failing section is tried once per run, not forever
    assert store.sync(FakeStreamingEmbedder())["failed_count"] == 1


def test_sync_in_parallel_never_embeds_a_section_twice(database_url, db):
    seed = SupabaseStore(database_url)
    seed.upsert_sections(_sections(400))
    seed.close()
    embedders = [FakeStreamingEmbedder(seed=i) for i in range(3)]
    errors = []

    def worker(embedder):
        try:
            with SupabaseStore(database_url) as s:
                s.sync(embedder, claim_batch=20)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(e,)) for e in embedders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    done = [text for e in embedders for text in e.embedded]
    assert len(done) == len(set(done)) == 400
    assert sum(1 for e in embedders if e.embedded) >= 2  # the work was actually shared
    assert _count(db, "select count(*) from section_embeddings") == 400


def test_sync_on_fatal_error_commits_what_arrived(store, db):
    store.upsert_sections(_sections(50))
    with pytest.raises(ProviderFatalError) as caught:
        store.sync(FakeStreamingEmbedder(window=10, fatal_after=15), claim_batch=50)
    assert caught.value.result["success_count"] == 15
    assert _count(db, "select count(*) from section_embeddings") == 15
    assert _count(db, "select count(*) from embedding_failures") == 0


# -- status ------------------------------------------------------------------------------------------


def test_status_reports_per_model(store, db):
    sections = _sections(20)
    sections[0]["content"] = ""
    sections[1]["content"] = "POISON"
    sections[2]["content"] = "POISON too"
    store.ingest(sections, FakeStreamingEmbedder())
    store.upsert_sections([{"id": "s3", "title": "Title 3", "content": "changed"}])
    store.ingest(sections[10:15], FakeStreamingEmbedder(model="second"), build_index=True)
    status = store.status()
    assert set(status) == {"fake-model", "second"}
    first = status["fake-model"]
    assert first["sections"] == 20
    assert first["embedded"] == 17 and first["stale"] == 1 and first["current"] == 16
    assert first["missing"] == 3 and first["failed"] == 3
    assert first["top_failure_reasons"][0] == ("rejected by provider: poison", 2)
    assert first["dimensions"] == [16] and first["indexed"] == {16: False}
    assert status["second"]["indexed"] == {16: True}
    only = store.status("never-seen")
    assert only == {"never-seen": {"sections": 20, "embedded": 0, "current": 0, "stale": 0, "missing": 20,
                                   "failed": 0, "dimensions": [], "indexed": {}, "missing_indexes": [],
                                   "top_failure_reasons": [],
                                   "collections": {"default": {"sections": 20, "embedded": 0, "stale": 0,
                                                               "missing": 20, "failed": 0, "lag_s": only[
                                                                   "never-seen"]["collections"]["default"]["lag_s"]}}}}
    assert only["never-seen"]["collections"]["default"]["lag_s"] >= 0


def test_status_counts_each_collection_and_can_keep_to_one(store):
    store.ingest(_sections(6), FakeStreamingEmbedder(), collection="docs")
    store.ingest([{"id": "p1", "title": "t", "content": "POISON"}, {"id": "p2", "title": "t", "content": "fine"}],
                 FakeStreamingEmbedder(), collection="python")
    store.upsert_sections([{"id": "p3", "title": "t", "content": "not yet"}], collection="python")
    assert store.collections() == {"docs": 6, "python": 3}
    model = store.status()["fake-model"]
    assert (model["sections"], model["embedded"], model["missing"], model["failed"]) == (9, 7, 2, 1)
    assert {name: {k: v for k, v in row.items() if k != "lag_s"} for name, row in model["collections"].items()} == {
        "docs": {"sections": 6, "embedded": 6, "stale": 0, "missing": 0, "failed": 0},
        "python": {"sections": 3, "embedded": 1, "stale": 0, "missing": 2, "failed": 1}}
    assert model["collections"]["docs"]["lag_s"] is None and model["collections"]["python"]["lag_s"] >= 0
    only = store.status(collection="python")["fake-model"]
    assert (only["sections"], only["embedded"], only["missing"], only["failed"]) == (3, 1, 2, 1)
    assert list(only["collections"]) == ["python"]


def test_store_repr_and_errors_never_show_the_password(embedded_pg):
    url = embedded_pg.url.replace("postgres:@", "postgres:hunter2@")
    with SupabaseStore(url) as s:
        assert "hunter2" not in repr(s)  # trust auth ignores the password; it must still be hidden
    bad = "postgresql://someone:s3cret-pw@/nosuchdb?host=/nonexistent-socket-dir"
    with pytest.raises(psycopg.OperationalError) as caught:
        SupabaseStore(bad, connect_timeout=2)
    assert "s3cret-pw" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize("dims, indexed", [(2001, True), (4000, True), (4001, False)])
def test_vectors_over_2000_dimensions_are_indexed_as_halfvec_up_to_4000(store, dims, indexed):
    """pgvector indexes `vector` up to 2,000 dimensions and halfvec up to 4,000; past that search stays exact."""
    store.upsert_sections(_sections(3))
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3, dims)).astype(np.float32)
    store.write_embeddings("wide", [(f"s{i}", vectors[i]) for i in range(3)])
    assert store.build_index("wide") == ([index_name("wide", dims)] if indexed else [])
    assert store.search_by_vector(vectors[1], "wide", k=2)[0]["id"] == "s1"
    assert store.match_sections(vectors[2], 2, "wide")[0]["id"] == "s2"
