"""core.postgres.embedded: where the data lives, starting/sharing/stopping the embedded server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from core.postgres import embedded as embedded_db
from core.postgres.embedded import (
    EmbeddedPostgres,
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
        "from core.postgres.embedded import EmbeddedPostgres\n"
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
            assert conn.execute("select count(*) from pg_available_extensions where name = 'vector'").fetchone()[0] == 1
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
