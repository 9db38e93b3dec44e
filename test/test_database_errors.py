"""A database that goes away in the middle of a command: every command says so in one line and
exits 1, never with a traceback, straight to the server and through pgbouncer alike; a write that
an ingest or sync had under way is waited out instead (sections.pipeline.outage).

The commands run as real subprocesses. To catch each inside a database call (not before, where
opening the store reports it), the test holds an exclusive lock on the store's tables: every command
blocks on its first read or write, and the test then terminates exactly those server backends,
as an administrator, a failover or a pooler dropping its server connection would.

The COPY case is the one psycopg does not report as a ``psycopg.Error``: behind pgbouncer a server
connection killed in the middle of a COPY surfaces as ``ValueError: too many values to unpack``
from psycopg's COPY code. An event trigger gives each staging table the ingest creates a row
trigger that waits on an advisory lock the test holds, so the ingest is inside its COPY when its
backend is killed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fixtures_pgbouncer import POOLED

pytestmark = POOLED

MODEL = "text-embedding-3-small"
SECRET = "pw-s3cret-never-shown"
TABLES = "sections, section_embeddings, embedding_failures, section_workers, section_leases"
COPY_LOCK = 724_001  # the advisory lock the staging tables' row trigger waits on

# Each staging table created (a temporary table, in the COPY's own transaction) gets a row trigger
# that waits on COPY_LOCK: the COPY stops at its first row until the test lets go or kills it.
HOLD_COPIES = f"""
create function _test_hold_copy() returns trigger language plpgsql as $$
begin
    perform pg_advisory_xact_lock_shared({COPY_LOCK});
    return new;
end $$;
create function _test_hold_stages() returns event_trigger language plpgsql as $$
declare created record;
begin
    for created in select * from pg_event_trigger_ddl_commands() where command_tag = 'CREATE TABLE' loop
        execute format('create trigger _test_hold before insert on %s for each row execute function _test_hold_copy()',
                       created.object_identity);
    end loop;
end $$;
create event trigger _test_hold_stages on ddl_command_end when tag in ('CREATE TABLE')
    execute function _test_hold_stages();
"""


@contextmanager
def holding(db, statement: str) -> Iterator[None]:
    """``statement`` (a lock) held in a transaction of a connection of its own: ``db`` stays free to
    watch ``pg_stat_activity``, which one transaction would only ever see one snapshot of."""
    with psycopg.connect(db.info.dsn, autocommit=True) as holder, holder.transaction():
        holder.execute(statement)
        yield


def with_password(url: str) -> str:
    """The same URL with a password in it (trust ignores it): no output may show it."""
    return make_conninfo(url, password=SECRET)


def start(*args: object, sim) -> subprocess.Popen[str]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": sim.base_url}
    return subprocess.Popen([sys.executable, "-m", "sections.cli.app", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


def waiting_backends(db, dbname: str, count: int, runs: dict[str, subprocess.Popen[str]]) -> list[int]:
    """The server backends of ``dbname`` waiting on a lock (a table's or an advisory one), once
    there are ``count`` of them."""
    deadline = time.monotonic() + 240
    while True:
        pids = [row[0] for row in db.execute(
            "select pid from pg_stat_activity where datname = %s and wait_event_type = 'Lock'"
            " and pid <> pg_backend_pid()", (dbname,)).fetchall()]
        if len(pids) >= count:
            return pids
        ended = {name: run for name, run in runs.items() if run.poll() is not None}
        if ended or time.monotonic() > deadline:
            details = {name: run.communicate() for name, run in ended.items()}
            pytest.fail(f"{len(pids)} of {count} commands reached the database; ended early: {details}")
        time.sleep(0.1)


def one_line_database_error(name: str, run: subprocess.Popen[str]) -> str:
    """The command exited 1 with one line on stderr (after a progress bar's last state, where there
    is one) that names a database error; no traceback, no password."""
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, (name, stdout, stderr)
    assert "Traceback" not in stdout + stderr and SECRET not in stdout + stderr, (name, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: database error: "), (name, stderr)
    bar = [line for line in lines[:-1] if not line.startswith(f"{name} ")]
    assert bar == [], (name, stderr)  # nothing else: not even psycopg_pool's log of the broken connection
    return lines[-1]


@pytest.fixture
def one_file(tmp_path: Path) -> Path:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"id": "a", "title": "A", "content": "one section"}) + "\n")
    return path


def test_every_command_meeting_a_database_that_goes_away_says_so_in_one_line(sim, database_url, db, one_file):
    url = with_password(database_url)
    embedding = ["--model", MODEL, "--base-url", sim.base_url, "--database-url", url, "--dimensions", "16"]
    commands = {
        "ingest": ["ingest", one_file, *embedding, "--json"],
        "search": ["search", "anything", *embedding, "--json"],
        "status": ["status", "--database-url", url, "--json"],
        "sync": ["sync", *embedding, "--json"],
        "index": ["index", "--model", MODEL, "--database-url", url],
        "delete": ["delete", "--prefix", "a", "--yes", "--json", "--database-url", url],
        "drop-model": ["drop-model", MODEL, "--yes", "--json", "--database-url", url],
        "demo": ["demo", "--model", MODEL, "--database-url", url],
    }
    dbname = conninfo_to_dict(database_url)["dbname"]
    with holding(db, f"lock table {TABLES} in access exclusive mode"):
        runs = {name: start(*args, sim=sim) for name, args in commands.items()}
        try:
            blocked = waiting_backends(db, dbname, len(runs), runs)
            db.execute("select pg_terminate_backend(pid) from unnest(%s::int[]) as pid", (blocked,))
        except BaseException:
            for run in runs.values():
                run.kill()
            raise
    for name, run in runs.items():
        one_line_database_error(name, run)
    assert db.execute("select count(*) from sections").fetchone()[0] == 0


def test_a_connection_killed_in_the_middle_of_a_copy_is_waited_out_and_the_run_finishes(sim, database_url, db,
                                                                                       one_file):
    """The write is retried on a fresh connection (sections.pipeline.outage): nothing paid for is
    lost and the run ends well, saying in one line each that the database went and came back."""
    db.execute(HOLD_COPIES)
    embedding = ["--model", MODEL, "--base-url", sim.base_url, "--database-url", with_password(database_url),
                 "--dimensions", "16", "--json"]
    dbname = conninfo_to_dict(database_url)["dbname"]
    with holding(db, f"select pg_advisory_xact_lock({COPY_LOCK})"):
        run = start("ingest", one_file, *embedding, sim=sim)
        try:
            (blocked,) = waiting_backends(db, dbname, 1, {"ingest": run})
            query = db.execute("select query from pg_stat_activity where pid = %s", (blocked,)).fetchone()[0]
            assert query.lower().startswith("copy "), query
            db.execute("select pg_terminate_backend(%s)", (blocked,))
        except BaseException:
            run.kill()
            raise
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    assert "Traceback" not in stdout + stderr and SECRET not in stdout + stderr, stderr
    assert json.loads(stdout)["embedded"] == 1
    lines = [line for line in stderr.splitlines() if line.startswith("database ")]
    assert len(lines) == 2 and lines[0].startswith("database unreachable") and lines[1].startswith("database back"), stderr
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == 1
    assert sim.stats()["inputs"] == 1  # paid once
