"""Locked down by default: row-level security on every table, functions with a fixed search_path.

The Supabase layout is rebuilt on the embedded server: pgvector in schema ``extensions``, an
``anon`` role (what the Data API runs a public-key request as) with Supabase's default grants,
and a table owner that is not a superuser, who runs the migrations and the CLI. The anon role
sees nothing until the policy of docs/supabase.md says otherwise; then it can search, through the same
functions, only what the policy opens; the owner never notices any of it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

from sections.records import Section
from core.supabase_store import SupabaseStore

ROOT = Path(__file__).resolve().parents[1]
DIMS = 8


def readme_policy() -> str:
    """The SQL the docs tell a Supabase user to run to open search to the anon key."""
    page = (ROOT / "docs" / "supabase.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- policy:public-search -->\s*```sql\n(.*?)```", page, re.DOTALL)
    assert found, "docs/supabase.md: no sql block after <!-- policy:public-search -->"
    return found.group(1)


def test_every_table_has_row_level_security_and_every_function_a_fixed_search_path(db):
    tables = {row[0]: row[1] for row in db.execute(
        "select c.relname, c.relrowsecurity from pg_class c where c.relnamespace = current_schema()::regnamespace "
        "and c.relkind in ('r', 'p') and not exists (select 1 from pg_depend d "
        "where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')")}
    assert {"sections", "section_embeddings", "embedding_failures", "schema_migrations", "section_workers",
            "section_leases"} <= set(tables)
    assert [name for name, locked in tables.items() if not locked] == []  # a new table needs its line in a migration
    functions = {row[0]: row[1] for row in db.execute(
        "select p.proname, p.proconfig from pg_proc p where p.pronamespace = current_schema()::regnamespace "
        "and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid "
        "and d.deptype = 'e')")}  # ours, not pgvector's
    assert {"sections_content_hash", "match_sections", "hybrid_match_sections"} <= set(functions)
    assert {name: config for name, config in functions.items()
            if not any(setting.startswith("search_path=") for setting in config or [])} == {}


@pytest.fixture
def supabase_like(embedded_pg):
    """A database laid out as Supabase's: the owner's URL (a login role that is not a superuser,
    search_path ``public, extensions``) and a superuser URL to act as ``anon`` with."""
    name, owner = f"supa_{uuid.uuid4().hex[:12]}", f"owner_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(embedded_pg.url, autocommit=True) as conn:
        conn.execute(f"create role {owner} login")
        conn.execute("do $$ begin create role anon nologin; exception when duplicate_object then null; end $$")
        conn.execute(f"create database {name} owner {owner}")
    try:
        with psycopg.connect(embedded_pg.url_for(name), autocommit=True) as conn:
            conn.execute("create schema extensions")
            conn.execute("create extension vector schema extensions")
            conn.execute("grant usage on schema extensions to public")
            conn.execute(f"alter role {owner} in database {name} set search_path = public, extensions")
            # Supabase's defaults: anon may use the schema, read its tables, call its functions
            conn.execute("grant usage on schema public to anon")
            conn.execute(f"alter default privileges for role {owner} in schema public grant select on tables to anon")
            conn.execute(f"alter default privileges for role {owner} in schema public grant execute on functions to anon")
        superuser = embedded_pg.url_for(name)
        yield superuser.replace("//postgres:@", f"//{owner}:@", 1), superuser
    finally:
        with psycopg.connect(embedded_pg.url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")
            conn.execute(f"drop role if exists {owner}")


def _load(owner_url: str) -> np.ndarray:
    """As the owner, through the store (migrations included): 'docs' and 'private' sections, vectors, a failure."""
    vectors = np.random.default_rng(4).standard_normal((20, DIMS)).astype(np.float32)
    with SupabaseStore(owner_url) as store:
        store.upsert_sections([Section(f"d{i}", f"Doc {i}", f"public page {i} about lanterns") for i in range(10)],
                              collection="docs")
        store.upsert_sections([Section(f"p{i}", f"Private {i}", f"secret note {i} about lanterns")
                               for i in range(10, 20)], collection="private")
        store.write_embeddings("m", [(f"d{i}", vectors[i]) for i in range(10)] +
                               [(f"p{i}", vectors[i]) for i in range(10, 20)])
        store.record_failures("m", {"d0": "a reason nobody outside should read"})
    return vectors


def _text(vector: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"  # as a Supabase client sends it


def test_search_works_for_a_caller_whose_search_path_lacks_pgvectors_schema(supabase_like):
    owner_url, _ = supabase_like
    vectors = _load(owner_url)
    with psycopg.connect(owner_url, autocommit=True, options="-c search_path=public") as caller:
        with pytest.raises(psycopg.errors.UndefinedFunction):  # what an unpinned function body would meet
            caller.execute("select vector_dims('[1,2]'::extensions.vector)")
        rows = caller.execute("select id from match_sections(%s, 3, 'm')", (_text(vectors[12]),)).fetchall()
        assert rows[0][0] == "p12"
        rows = caller.execute("select id from hybrid_match_sections('lanterns', %s, 20, 'm', collection => 'docs')",
                              (_text(vectors[4]),)).fetchall()
        assert {row[0] for row in rows} == {f"d{i}" for i in range(10)}
        config = caller.execute("select proconfig from pg_proc where proname = 'match_sections'").fetchone()[0]
        assert config == ["search_path=pg_catalog, public, extensions, pg_temp"]


def test_anon_sees_nothing_until_the_readme_policy_opens_one_collection(supabase_like, tmp_path):
    owner_url, superuser_url = supabase_like
    vectors = _load(owner_url)
    query = _text(vectors[3])

    def as_anon(statement: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(superuser_url, autocommit=True) as conn, conn.transaction():
            conn.execute("set local role anon")
            conn.execute("set local search_path = public")
            return conn.execute(statement, params).fetchall()

    for table in ("sections", "section_embeddings", "embedding_failures", "schema_migrations", "section_workers",
                  "section_leases"):
        assert as_anon(f"select count(*) from {table}") == [(0,)], table
    assert as_anon("select id from match_sections(%s, 5, 'm')", (query,)) == []
    assert as_anon("select id from hybrid_match_sections('lanterns', %s, 5, 'm')", (query,)) == []

    with psycopg.connect(owner_url, autocommit=True) as owner:
        owner.execute(readme_policy())

    found = [row[0] for row in as_anon("select id from match_sections(%s, 5, 'm')", (query,))]
    with SupabaseStore(owner_url) as store:
        expected = [hit["id"] for hit in store.search_by_vector(vectors[3], "m", k=5, collection="docs")]
        everything = store.search_by_vector(vectors[13], "m", k=20, collection=None)
    assert found == expected and found[0] == "d3"
    assert {row[0] for row in as_anon("select id from hybrid_match_sections('lanterns', %s, 20, 'm')", (query,))} == \
        {f"d{i}" for i in range(10)}  # every section of 'docs', none of 'private'
    assert as_anon("select count(*) from sections") == [(10,)]
    assert as_anon("select count(*) from section_embeddings") == [(10,)]
    assert as_anon("select count(*) from embedding_failures") == [(0,)]  # no policy opens that one

    # the owner, and the CLI it runs, see everything as before
    assert everything[0]["id"] == "p13" and len(everything) == 20
    status = subprocess.run([sys.executable, "-m", "sections.cli.app", "status", "--database-url", owner_url, "--json"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["collections"] == {"docs": 10, "private": 10} and report["models"]["m"]["failed"] == 1


def test_a_role_that_row_level_security_hides_everything_from_is_told_so_in_one_line(db, database_url):
    import subprocess
    import sys
    import uuid

    from psycopg import sql

    name = f"plain_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
    try:
        db.execute(sql.SQL("grant usage on schema public to {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("grant all on all tables in schema public to {}").format(sql.Identifier(name)))
        url = database_url.replace("postgres:@", f"{name}:@")
        done = subprocess.run([sys.executable, "-m", "sections.cli.app", "status", "--database-url", url],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "row-level security hides its rows" in done.stderr and "BYPASSRLS" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        db.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))
