"""sections.postgres.embedded: where the data lives, starting/sharing/stopping the embedded server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from sections.postgres import embedded as embedded_db
from sections.postgres.embedded import (
    EmbeddedPostgres,
    IncompatibleDataDir,
    data_dir,
    open_database,
    postgres_dir,
    resolve_database_url,
    stop_embedded,
)

ROOT = Path(__file__).resolve().parents[1]


# -- where the data lives ----------------------------------------------------------------------------


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SECTIONS_DATA_DIR", raising=False)
    default = data_dir()
    assert default.name == "sections"
    assert postgres_dir() == default / "postgres"
    monkeypatch.setenv("SECTIONS_DATA_DIR", str(tmp_path / "from-env"))
    assert data_dir() == tmp_path / "from-env"
    assert postgres_dir(tmp_path / "from-arg") == tmp_path / "from-arg" / "postgres"


def test_a_given_url_starts_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", "postgresql://env-user:pw@env-host/db")
    assert resolve_database_url("postgresql://arg/db", data_dir=tmp_path) == "postgresql://arg/db"
    assert resolve_database_url(None, data_dir=tmp_path) == "postgresql://env-user:pw@env-host/db"
    handle = open_database(None, tmp_path)
    assert handle.embedded is None and "pw" not in repr(handle)
    assert not (tmp_path / "postgres").exists()


# -- the embedded server -----------------------------------------------------------------------------


def _postmaster_pid(pgdata: Path):
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text().splitlines()[0])
    return pid if psutil.pid_exists(pid) else None


def _other_process(data: Path, code: str) -> str:
    script = (
        "import sys, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, %r)\n"
        "from sections.postgres.embedded import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres(%r)\n" % (str(ROOT), str(data))
    ) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def test_embedded_server_starts_persists_is_shared_and_stops(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    data = tmp_path / "data"
    pgdata = data / "postgres"

    url = resolve_database_url(None, data_dir=data)
    try:
        assert url.startswith("postgresql://postgres:@/postgres?host=")  # no password, unix socket
        pid = _postmaster_pid(pgdata)
        assert pid is not None
        assert resolve_database_url(None, data_dir=data) == url  # same server on a second call
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("show listen_addresses").fetchone()[0] == ""  # no TCP at all
            # PostgreSQL 18 and pgvector >= 0.8: halfvec, so vectors up to 4,000 dimensions get an HNSW index
            assert conn.execute("show server_version_num").fetchone()[0].startswith("18")
            vector = conn.execute("select default_version from pg_available_extensions where name = 'vector'").fetchone()
            assert vector is not None and tuple(map(int, vector[0].split("."))) >= (0, 8, 0)
            conn.execute("create table kept (x int)")
            conn.execute("insert into kept values (42)")

        # another process joins the same server and lets go of it: ours keeps running
        assert _other_process(data, "print(pg.pid); pg.stop()") == str(pid)
        assert _postmaster_pid(pgdata) == pid

        # a process that died without unregistering must not keep the server up forever
        handle_list = pgdata / ".handle_pids.json"
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
        handle_list.write_text(json.dumps(json.loads(handle_list.read_text()) + [int(dead)]))
    finally:
        stop_embedded(data)
    assert _postmaster_pid(pgdata) is None  # we were the last user: stopped cleanly

    # a later run reuses the same cluster and its data
    with EmbeddedPostgres(data) as pg:
        assert pg.pid is not None and pg.pid != pid
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("select x from kept").fetchone()[0] == 42
        with EmbeddedPostgres(data) as second:  # handles in one process share one registration
            assert second.pid == pg.pid
        assert _postmaster_pid(pgdata) == pg.pid
    assert _postmaster_pid(pgdata) is None


def test_store_with_no_url_uses_the_embedded_server_in_the_data_dir(monkeypatch, tmp_path):
    from core.supabase_store import SupabaseStore

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SECTIONS_DATA_DIR", str(tmp_path / "env-data"))
    with SupabaseStore() as store:
        store.upsert_sections([{"id": "a", "title": "", "content": "hello"}])
        assert (tmp_path / "env-data" / "postgres" / "PG_VERSION").exists()
    assert _postmaster_pid(tmp_path / "env-data" / "postgres") is None  # close() stopped what it started
    with SupabaseStore() as store:
        assert store.get_section("a")["content"] == "hello"


def test_embedded_start_failure_is_reported(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with pytest.raises((RuntimeError, OSError)):
        EmbeddedPostgres(blocker)
    assert embedded_db._refcounts.get((blocker / "postgres").resolve()) is None


# -- a data directory from another PostgreSQL major ---------------------------------------------------


def _old_cluster(data: Path) -> Path:
    """The shape earlier versions of sections left behind (a PostgreSQL 16 cluster): only what the
    check reads is real (``PG_VERSION``); the rest stands for data that must survive untouched."""
    pgdata = data / "postgres"
    (pgdata / "base" / "5").mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("16\n")
    (pgdata / "base" / "5" / "16384").write_bytes(b"\x00rows of an old cluster")
    (pgdata / "postgresql.conf").write_text("# old settings\n")
    return pgdata


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_uid, p.stat().st_mtime_ns,
                                       p.read_bytes() if p.is_file() else None)
            for p in [root, *root.rglob("*")]}


def test_a_cluster_from_another_major_is_refused_and_left_as_it_was(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pgdata = _old_cluster(tmp_path / "data")
    before = _snapshot(pgdata)
    with pytest.raises(IncompatibleDataDir) as caught:
        EmbeddedPostgres(tmp_path / "data")
    assert (caught.value.found, caught.value.server_major) == ("16", "18")
    assert "PostgreSQL 16" in str(caught.value) and "Upgrading the embedded Postgres" in str(caught.value)
    assert _snapshot(pgdata) == before  # not chowned, no log, no postmaster.pid, nothing deleted
    assert embedded_db._refcounts.get(pgdata.resolve()) is None


def test_the_cli_reports_an_old_data_dir_in_one_line(tmp_path):
    """Through the command, with the data directory users set: ``SECTIONS_DATA_DIR``."""
    pgdata = _old_cluster(tmp_path / "data")
    before = _snapshot(pgdata)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["SECTIONS_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, "-m", "sections.cli.app", "status"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: ") and str(pgdata) in lines[0] and "PostgreSQL 16" in lines[0]
    assert "docs/supabase.md (Upgrading the embedded Postgres)" in lines[0]
    assert _snapshot(pgdata) == before
