"""The pooled runs (test/fixtures_pgbouncer.py) prove something only if the pooler really takes
session state away after every transaction: checked here against the server itself, where the
same state stays."""
from __future__ import annotations

import psycopg

PROBES = {
    "temp_table": "to_regclass('pg_temp.pooled_probe') is not null",
    "setting": "current_setting('sections.probe', true) is not distinct from 'on'",
    "prepared": "exists (select 1 from pg_prepared_statements where name = 'pooled_statement')",
    "advisory_lock": "exists (select 1 from pg_locks where locktype = 'advisory' and objid = 4711"
                     " and pid = pg_backend_pid())",
}


def session_state_after_a_commit(url: str) -> dict[str, bool]:
    """Session state made in one transaction, as the next transaction of the same client sees it."""
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        with conn.transaction():
            conn.execute("create temp table pooled_probe (x int)")
            conn.execute("select set_config('sections.probe', 'on', false)")  # what a plain SET does
            conn.execute("prepare pooled_statement as select 1")
            conn.execute("select pg_advisory_lock(4711)")  # session-level: the store only takes xact locks
        with conn.transaction():
            row = conn.execute("select " + ", ".join(PROBES.values())).fetchone()
    assert row is not None
    return dict(zip(PROBES, row))


def test_pgbouncer_wipes_what_a_session_holds_after_every_transaction(database_url, pgbouncer):
    assert session_state_after_a_commit(database_url) == dict.fromkeys(PROBES, True)
    assert session_state_after_a_commit(pgbouncer.url_for(database_url)) == dict.fromkeys(PROBES, False)
