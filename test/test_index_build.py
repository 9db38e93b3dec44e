"""Index builds that finish, against the embedded Postgres, the CLI as a real subprocess.

What went wrong on a Supabase-like server, reproduced here with real roles and real builds: a role's
``statement_timeout`` cancelled the build; a failed automatic build was reported as ``embedded 0``
and a rerun that found everything unchanged never built it; re-embedding with other dimensions left
the old dimension's index behind. Also: an invalid index (a ``CREATE INDEX CONCURRENTLY`` cancelled
part-way) is rebuilt, progress reaches the callback, and a server that cannot give the memory asked
for (a parallel build's shared memory over ``/dev/shm``, as in a container) still gets its index.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import psycopg
import pytest
from psycopg import sql

from sections.postgres import index_build
from sections.postgres.index import index_name
from core.supabase_store import SupabaseStore
from fake_embedder import FakeStreamingEmbedder

CLI = [sys.executable, "-m", "sections.cli.app"]


def _load(store, n, dims, model="m", seed=1, prefix="v"):
    rng = np.random.default_rng(seed)
    store.upsert_sections([{"id": f"{prefix}{i}", "title": "", "content": f"body {i}"} for i in range(n)])
    store.write_embeddings(model, [(f"{prefix}{i}", rng.standard_normal(dims).astype(np.float32)) for i in range(n)])


def _valid(db, name):
    row = db.execute("select indisvalid from pg_index where indexrelid = to_regclass(%s)", (name,)).fetchone()
    return None if row is None else row[0]


def _hnsw(db):
    return [r[0] for r in db.execute("select indexname from pg_indexes where indexname like 'section_embeddings_hnsw%'")]


def _sections_cli(*args, timeout=300):
    env = {**os.environ, "COLUMNS": "200"}  # tables as wide as their lines
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False, env=env)


@pytest.fixture
def role(database_url, db):
    """Make a login role on the test database (``make(owner=, statement_timeout=)`` -> its URL):
    the owner of ``section_embeddings`` may build indexes on it; any other role may only write."""
    made = []
    parts = urlsplit(database_url)
    host = parse_qs(parts.query)["host"][0]

    def make(*, owner: bool, statement_timeout: str | None = None) -> str:
        name = f"r_{uuid.uuid4().hex[:12]}"
        # bypassrls, as Supabase's service_role: every table has row-level security with no policy
        db.execute(sql.SQL("create role {} login bypassrls").format(sql.Identifier(name)))
        made.append(name)
        for grant in ("grant usage, create on schema public to {}", "grant all on all tables in schema public to {}"):
            db.execute(sql.SQL(grant).format(sql.Identifier(name)))
        if owner:
            db.execute(sql.SQL("alter table section_embeddings owner to {}").format(sql.Identifier(name)))
        if statement_timeout is not None:
            db.execute(sql.SQL("alter role {} set statement_timeout = {}").format(
                sql.Identifier(name), sql.Literal(statement_timeout)))
        return f"postgresql://{name}@{parts.path}?host={quote(host, safe='')}"

    yield make
    for name in made:
        db.execute(sql.SQL("reassign owned by {} to current_user").format(sql.Identifier(name)))
        db.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def test_a_role_whose_statement_timeout_cancels_the_build_gets_its_index_from_the_cli(store, db, role):
    _load(store, 2000, 384)
    url = role(owner=True, statement_timeout="250ms")
    statement = ("create index probe on section_embeddings using hnsw ((embedding::vector(384)) vector_cosine_ops) "
                 "where model_name = 'm' and dimensions = 384")
    with psycopg.connect(url, autocommit=True) as conn:  # the build, as that role runs it, outlasts the timeout
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute(statement)

    indexed = _sections_cli("index", "--model", "m", "--database-url", url, "--json")
    assert indexed.returncode == 0, indexed.stderr
    report = json.loads(indexed.stdout)
    name = index_name("m", 384)
    assert report["indexes"] == [name] and [b["name"] for b in report["built"]] == [name]
    assert report["built"][0]["rows"] == 2000 and report["built"][0]["seconds"] > 0.25
    assert _valid(db, name) is True
    with psycopg.connect(url, autocommit=True) as conn:  # the role's timeout is untouched outside the build
        assert conn.execute("show statement_timeout").fetchone()[0] == "250ms"

    again = _sections_cli("index", "--model", "m", "--database-url", url)
    assert again.returncode == 0 and f"indexed m: {name}" in again.stdout and "built" not in again.stdout


def test_a_failed_automatic_build_is_a_warning_and_the_rerun_that_embeds_nothing_builds_it(sim, database_url, db,
                                                                                          role, tmp_path):
    # 10,000 sections: what an ingest builds an index for by itself
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "content": f"section number {i}"}) + "\n"
                            for i in range(10_000)), encoding="utf-8")
    model = "text-embedding-3-small"
    writer = role(owner=False)  # may write vectors, may not build an index on a table it does not own
    common = ["--model", model, "--dimensions", "8", "--base-url", sim.base_url]

    first = _sections_cli("ingest", path, *common, "--database-url", writer, "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["embedded"] == 10_000 and summary["failed"] == 0
    assert "must be owner of table section_embeddings" in summary["index_error"]
    warnings = [line for line in first.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "not built" in warnings[0] and f"sections index --model {model}" in warnings[0]

    status = json.loads(_sections_cli("status", "--database-url", database_url, "--json").stdout)
    assert status["models"][model]["missing_indexes"] == [8] and status["models"][model]["indexed"] == {"8": False}
    table = _sections_cli("status", "--database-url", database_url)
    assert "missing index" in table.stdout and f"sections index --model {model}" in table.stdout

    rerun = _sections_cli("ingest", path, *common, "--database-url", database_url, "--json")
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(rerun.stdout)
    assert again["embedded"] == 0 and again["unchanged"] == 10_000 and again["index_error"] is None
    assert "warning" not in rerun.stderr
    assert _valid(db, index_name(model, 8)) is True
    status = json.loads(_sections_cli("status", "--database-url", database_url, "--json").stdout)
    assert status["models"][model]["missing_indexes"] == []
    assert "missing index" not in _sections_cli("status", "--database-url", database_url).stdout


def test_the_store_reports_a_failed_build_and_a_rerun_builds_it(database_url, db, role):
    with SupabaseStore(role(owner=False), auto_index_min_rows=100) as writer:
        result = writer.ingest([{"id": f"s{i}", "content": f"text {i}"} for i in range(150)], FakeStreamingEmbedder())
        assert result["success_count"] == 150 and "must be owner" in result["index_error"]
        assert writer.status("fake-model")["fake-model"]["missing_indexes"] == [16]
    with SupabaseStore(database_url, auto_index_min_rows=100) as owner:
        embedder = FakeStreamingEmbedder()
        rerun = owner.ingest([{"id": f"s{i}", "content": f"text {i}"} for i in range(150)], embedder)
        assert rerun["success_count"] == 0 and rerun["skipped_count"] == 150 and embedder.embedded == []
        assert "index_error" not in rerun
        assert owner.has_index("fake-model", 16)
        assert owner.status("fake-model")["fake-model"]["missing_indexes"] == []


def test_the_index_of_a_dimension_no_longer_stored_is_dropped(store, db):
    sections = [{"id": f"s{i}", "content": f"text {i}"} for i in range(40)]
    store.ingest(sections, FakeStreamingEmbedder(dimensions=32), build_index=True)
    assert _hnsw(db) == [index_name("fake-model", 32)]
    half = store.ingest(sections[:20], FakeStreamingEmbedder(dimensions=16), build_index=True)
    assert half["success_count"] == 20  # 20 vectors of each: both indexes serve searches
    assert sorted(_hnsw(db)) == sorted([index_name("fake-model", 16), index_name("fake-model", 32)])
    store.ingest(sections, FakeStreamingEmbedder(dimensions=16))  # below auto_index_min_rows: still tidied
    assert _hnsw(db) == [index_name("fake-model", 16)]

    store.write_embeddings("other", [("s0", np.ones(8, np.float32))])  # another model's indexes stay
    store.build_index("other")
    store.write_embeddings("other", [("s0", np.ones(4, np.float32))])
    report = store.update_indexes("other")
    assert report.dropped_stale == [index_name("other", 8)] and report.indexes == [index_name("other", 4)]
    assert index_name("fake-model", 16) in _hnsw(db)


def test_an_invalid_index_is_dropped_and_built_again(store, db, database_url):
    _load(store, 300, 32)
    name = index_name("m", 32)
    # What a CREATE INDEX CONCURRENTLY cancelled part-way leaves: the index in the catalog, invalid.
    # It waits for open writers after creating its catalog entry; cancel it there.
    with psycopg.connect(database_url) as writer:
        writer.execute("update section_embeddings set token_count = token_count where false")  # holds a writer's lock
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("set statement_timeout = '300ms'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(sql.SQL("create index concurrently {} on section_embeddings using hnsw "
                                     "((embedding::vector(32)) vector_cosine_ops) "
                                     "where model_name = 'm' and dimensions = 32").format(sql.Identifier(name)))
        writer.rollback()
    assert _valid(db, name) is False
    assert not store.has_index("m", 32)
    store.auto_index_min_rows = 100
    assert store.status("m")["m"]["missing_indexes"] == [32] and store.status("m")["m"]["indexed"] == {32: False}

    report = store.update_indexes("m")
    assert report.dropped_invalid == [name] and [b.name for b in report.built] == [name] and report.indexes == [name]
    assert _valid(db, name) is True and store.has_index("m", 32)
    assert store.search_by_vector(np.ones(32, np.float32), "m", k=3)


def test_progress_reaches_the_callback_phase_by_phase(store, db, database_url, monkeypatch):
    monkeypatch.setattr(index_build, "POLL_INTERVAL", 0.02)
    _load(store, 1500, 384)
    name = index_name("m", 384)
    events = []
    # another process holds the build's lock: the first thing the callback hears is the wait
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (name,))
        building = threading.Thread(target=lambda: events.append(store.update_indexes("m", on_progress=events.append)))
        building.start()
        deadline = time.monotonic() + 30
        while not any(getattr(e, "phase", None) == "waiting for another build of this index" for e in list(events)):
            assert time.monotonic() < deadline, events
            time.sleep(0.02)
        other.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (name,))
    building.join(120)
    report, progress = events[-1], events[:-1]
    assert [b.name for b in report.built] == [name]
    assert progress[0] == index_build.IndexProgress(name, 384, "starting", 0, 1500)
    phases = [e.phase for e in progress]
    assert "loading tuples" in phases and phases[-1] == "done" and progress[-1].done == 1500
    done = [e.done for e in progress]
    assert done == sorted(done) and any(0 < d < 1500 for d in done)

    quiet = store.update_indexes("m", on_progress=None)  # nothing to build: no events, no thread
    assert quiet.built == [] and quiet.indexes == [name]


def test_a_graph_that_outgrows_maintenance_work_mem_is_noted(store):
    _load(store, 1500, 64)
    report = store.update_indexes("m", maintenance_work_mem="1MB")
    assert report.built[0].memory == "1 MB"
    assert len(report.notes) == 1 and "hnsw graph no longer fits into maintenance_work_mem" in report.notes[0]


def _shm_bytes() -> int | None:
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    return stat.f_blocks * stat.f_frsize or None  # 0: a tmpfs without a size limit, which would not refuse


def test_a_server_that_cannot_give_the_memory_builds_serially(store, db, database_url):
    shm = _shm_bytes()
    if shm is None:
        pytest.skip("no size-limited /dev/shm: parallel builds here cannot run out of shared memory")
    # A parallel HNSW build puts its graph in one shared memory segment of maintenance_work_mem
    # bytes; asked for more than /dev/shm holds, the kernel refuses at once (as a container's 64 MB does).
    db.execute(sql.SQL("alter database {} set min_parallel_table_scan_size = 0").format(
        sql.Identifier(urlsplit(database_url).path.lstrip("/"))))  # even this small table is built in parallel
    _load(store, 500, 64)
    too_much = f"{shm // (1 << 20) + 1024}MB"
    with SupabaseStore(database_url) as fresh:  # connections that have the database's setting
        report = fresh.update_indexes("m", maintenance_work_mem=too_much)
    name = index_name("m", 64)
    assert report.indexes == [name] and _valid(db, name) is True
    assert report.built[0].workers == 0 and report.built[0].memory == "64 MB"
    assert len(report.notes) == 1 and "could not resize shared memory segment" in report.notes[0]
    assert "built serially" in report.notes[0]


def test_memory_for_a_build_fits_the_graph_within_the_cap():
    assert index_build.build_memory(20_000, 3072, True, 16, 2048) == 189  # halfvec: 2 bytes a dimension
    assert index_build.build_memory(20_000, 3072, False, 16, 2048) > 189
    assert index_build.build_memory(10_000_000, 1536, False, 16, 2048) == 2048
    assert index_build.parse_kb("2GB") == 2 << 20 and index_build.parse_kb("65536") == 65536
    with pytest.raises(ValueError):
        SupabaseStore("postgresql://nowhere.invalid/db", max_index_memory="lots")
