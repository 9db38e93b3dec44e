"""SQL migrations: ``NNN_name.sql`` files in this package, applied in order, each once.

``apply_migrations(conn)`` first reads ``schema_migrations`` without a lock: when every shipped
migration is recorded (every start but the first after an upgrade) that is all it does, so a
start takes no lock and runs no DDL, and many workers starting at once do not queue. Otherwise it
runs in one transaction that first takes a transaction-scoped advisory lock, so two processes
migrating at once serialise: the second waits, then sees the first's rows in ``schema_migrations``
and applies nothing. A migration that fails rolls back with everything else in that transaction;
nothing is recorded for it.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

__all__ = ["Migration", "migrations", "apply_migrations", "MIGRATION_LOCK_KEY"]

# pg_advisory_xact_lock key: a fixed 63-bit number derived from the name, shared by every process.
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.blake2b(b"sections.schema_migrations", digest_size=8).digest(), "big") >> 1

_NAME = re.compile(r"^(\d{3,})_([A-Za-z0-9_]+)\.sql$")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: str  # "001"
    name: str  # "001_init"
    sql: str
    checksum: str  # sha256 of the file, hex


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files(__package__).iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        sql = entry.read_text(encoding="utf-8")
        found.append(Migration(match.group(1), entry.name[:-4], sql, hashlib.sha256(sql.encode()).hexdigest()))
    found.sort(key=lambda m: int(m.version))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in sections/postgres/schema: {versions}")
    return found


_HIDDEN = """
select c.relrowsecurity and not pg_has_role(c.relowner, 'USAGE') and not r.rolbypassrls and not r.rolsuper
  from pg_class c, pg_roles r
 where c.oid = to_regclass('schema_migrations') and r.rolname = current_user
"""


def _rows_hidden(conn: psycopg.Connection[Any]) -> bool:
    """Whether row-level security hides schema_migrations' rows from this role: it would then take
    every migration for unapplied and fail on the first DDL with a misleading error."""
    row = conn.execute(_HIDDEN).fetchone()
    return bool(row and row[0])


def _recorded(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """{version: checksum} of the migrations this database has applied."""
    return {row[0]: row[1] for row in conn.execute("select version, checksum from schema_migrations")}


def _up_to_date(conn: psycopg.Connection[Any], shipped: list[Migration]) -> bool:
    """Whether every shipped migration is recorded, read without the lock (migrations are only
    ever added, so a yes cannot turn into a no; a no is decided again under the lock)."""
    with conn.transaction():
        row = conn.execute("select to_regclass('schema_migrations') is not null").fetchone()
        done = _recorded(conn) if row and row[0] else {}
    for migration in shipped:
        if migration.version not in done:
            return False
        _warn_if_changed(migration, done[migration.version])
    return True


def _warn_if_changed(migration: Migration, checksum: str) -> None:
    if checksum != migration.checksum:
        _log.warning("migration %s changed since it was applied; applied migrations are never re-run: "
                     "put changes in a new file", migration.name)


def apply_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the migrations this database lacks; returns the names applied (empty if none).

    ``conn`` is a psycopg 3 connection, idle (not inside a transaction).
    """
    shipped = migrations()
    if _up_to_date(conn, shipped):
        return []
    applied_now: list[str] = []
    with conn.transaction():
        if _rows_hidden(conn):
            raise RuntimeError(
                "this role cannot read schema_migrations (row-level security hides its rows): connect as the "
                "tables' owner, or a role with BYPASSRLS such as Supabase's service_role")
        conn.execute("select pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(
            """
            create table if not exists schema_migrations (
                version     text primary key,
                name        text not null,
                checksum    text not null,
                applied_at  timestamptz not null default now()
            )
            """
        )
        done = _recorded(conn)
        for migration in shipped:
            if migration.version in done:
                _warn_if_changed(migration, done[migration.version])
                continue
            _log.info("applying migration %s", migration.name)
            conn.execute(migration.sql)  # no parameters: simple query protocol, several statements
            conn.execute(
                "insert into schema_migrations (version, name, checksum) values (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(migration.name)
    return applied_now
