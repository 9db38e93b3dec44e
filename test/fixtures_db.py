"""Fixtures that start the embedded Postgres (sections.postgres.embedded) for tests.

- ``embedded_pg`` (session): one embedded PostgreSQL 18 + pgvector 0.8 in a temporary directory,
  with a template database that already has every migration applied.
- ``database_url`` (function): a fresh database for each test, cloned from that template
  (``CREATE DATABASE … TEMPLATE``, a few milliseconds) and dropped afterwards; on the
  ``"pgbouncer"`` route (test/fixtures_pgbouncer.py) its URL goes through pgbouncer.
- ``store`` (function): a ``SupabaseStore`` on that database, closed afterwards.
- ``db`` (function): a plain autocommit psycopg connection to it, pgvector types registered,
  always straight to the server: the test's own probe, whichever route the store takes.
- ``nested_plans(conn, statement, params)``: the rows of a statement and the plans of everything it
  ran, the dynamic SQL inside functions included (how a test sees the plan inside ``match_sections``).
"""
from __future__ import annotations

import shutil
import tempfile
import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

__all__ = ["embedded_pg", "database_url", "store", "db", "nested_plans"]

TEMPLATE_DB = "sections_template"


@pytest.fixture(scope="session")
def embedded_pg():
    from sections.postgres.embedded import EmbeddedPostgres
    from sections.postgres.schema import apply_migrations

    # Not under pytest's tmp_path: pytest prunes old base temp folders, and a second pytest run on
    # the same machine would delete this live server's data directory from under it.
    data_dir = tempfile.mkdtemp(prefix="sections-test-pg-")
    pg = EmbeddedPostgres(data_dir)
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            # a throwaway cluster: durability buys nothing here, and fsyncs cost seconds per run
            for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
                conn.execute(f"alter system set {setting}")
            conn.execute("select pg_reload_conf()")
            conn.execute(f"drop database if exists {TEMPLATE_DB}")
            conn.execute(f"create database {TEMPLATE_DB}")
        with psycopg.connect(pg.url_for(TEMPLATE_DB), autocommit=True) as conn:
            apply_migrations(conn)
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def database_url(embedded_pg, route, request):
    bouncer = request.getfixturevalue("pgbouncer") if route == "pgbouncer" else None
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(embedded_pg.url, autocommit=True) as conn:
        conn.execute(f"create database {name} template {TEMPLATE_DB}")
    try:
        url = embedded_pg.url_for(name)
        yield url if bouncer is None else bouncer.url_for(url)
    finally:
        with psycopg.connect(embedded_pg.url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def store(database_url):
    from core.supabase_store import SupabaseStore

    s = SupabaseStore(database_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def db(embedded_pg, database_url):
    from pgvector.psycopg import register_vector

    with psycopg.connect(embedded_pg.url_for(conninfo_to_dict(database_url)["dbname"]), autocommit=True) as conn:
        register_vector(conn)
        yield conn


def nested_plans(conn, statement, params=None):
    """The rows ``statement`` returns, and the plans of every statement it runs, functions' dynamic
    SQL included (auto_explain, sent to this client as notices), joined in one string."""
    notices = []
    handler = lambda diag: notices.append(diag.message_primary or "")  # noqa: E731
    conn.add_notice_handler(handler)
    conn.execute("load 'auto_explain'")
    for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_nested_statements = on",
                    "auto_explain.log_level = notice"):
        conn.execute(f"set {setting}")
    try:
        rows = conn.execute(statement, params).fetchall()
    finally:
        conn.execute("reset all")
        conn.remove_notice_handler(handler)
    return rows, "\n".join(notices)
