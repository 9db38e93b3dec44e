"""Write-path benchmark: 100,000 vectors of 384 dimensions into Postgres/pgvector, side by side.

In one run, against one fresh database:
  - ours: ``SupabaseStore.write_embeddings`` (binary COPY into a temporary table, one
    ``INSERT … ON CONFLICT DO UPDATE``, failures cleared; one transaction per batch), first into an
    empty table (inserts) and then again over the same rows (every row an update);
  - raw binary COPY into a plain table (no keys, no constraints), same batches and transactions,
    same client-side encoder: the ceiling for getting the bytes into Postgres;
  - raw binary COPY straight into ``section_embeddings`` (primary key, foreign key and check
    constraint, but no upsert: it would fail on any existing row): the ceiling for this schema;
  - raw binary COPY driven by pgvector's psycopg dumper (``copy.write_row``), for reference;
  - one upsert statement per row, each its own transaction (what the seed did through
    supabase-py): a sample of 2,000 rows is timed and scaled.

Run: ``python -m bench.bench_write`` (``--help`` for sizes; ``--database-url`` to run against a
server of your own, which must allow CREATE DATABASE). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
import uuid

import numpy as np
import psycopg

from bench.report import environment, table
from core import vector_writer
from core.embedded_db import EmbeddedPostgres, mask_url
from core.supabase_store import SupabaseStore, content_hash


def _rows(n: int, dims: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dims), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"section-{i:07d}" for i in range(n)]
    digests = [content_hash(f"title {i}", f"content {i}", "bench-model", None, "average") for i in range(n)]
    return [(ids[i], vectors[i], 300, digests[i]) for i in range(n)]


def _batches(rows, size):
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def bench_ours(store: SupabaseStore, rows, batch: int) -> float:
    started = time.perf_counter()
    for chunk in _batches(rows, batch):
        store.write_embeddings("bench-model", chunk, long_input="average", batch_size=batch)
    return time.perf_counter() - started


RAW_DDL = """
drop table if exists raw_embeddings;
create table raw_embeddings (section_id text, embedding vector, token_count int4, content_hash bytea)
"""


def bench_raw(url: str, rows, batch: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_DDL)
        started = time.perf_counter()
        for chunk in _batches(rows, batch):
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("copy raw_embeddings (section_id, embedding, token_count, content_hash) "
                              "from stdin (format binary)") as copy:
                    for piece in vector_writer.iter_copy_data(chunk, []):
                        copy.write(piece)
        elapsed = time.perf_counter() - started
        assert conn.execute("select count(*) from raw_embeddings").fetchone()[0] == len(rows)
    return elapsed


def _iter_direct(rows, model: bytes):
    """Binary COPY rows for section_embeddings itself (id, model, vector, dims, tokens, hash)."""
    model_field = struct.pack(">i", len(model)) + model
    yield vector_writer._COPY_HEADER
    for start in range(0, len(rows), 256):
        piece = rows[start:start + 256]
        matrix = np.stack([r[1] for r in piece]).astype(">f4")
        dims = matrix.shape[1]
        flat = memoryview(matrix.tobytes())
        parts = []
        for j, (section_id, _vector, tokens, digest) in enumerate(piece):
            id_bytes = section_id.encode()
            parts.append(struct.pack(">hi", 6, len(id_bytes)) + id_bytes + model_field
                         + struct.pack(">iHH", 4 + 4 * dims, dims, 0))
            parts.append(flat[j * 4 * dims:(j + 1) * 4 * dims])
            parts.append(struct.pack(">iiii", 4, dims, 4, tokens) + struct.pack(">i", len(digest)) + digest)
        yield b"".join(parts)
    yield vector_writer._COPY_TRAILER


def bench_raw_into_schema(url: str, rows, batch: int) -> float:
    """COPY straight into section_embeddings (its PK, FK and check), no upsert: this schema's ceiling."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from section_embeddings where model_name = 'raw-model'")
        conn.execute("checkpoint")
        started = time.perf_counter()
        for chunk in _batches(rows, batch):
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("copy section_embeddings (section_id, model_name, embedding, dimensions, "
                              "token_count, content_hash) from stdin (format binary)") as copy:
                    for piece in _iter_direct(chunk, b"raw-model"):
                        copy.write(piece)
        elapsed = time.perf_counter() - started
        conn.execute("delete from section_embeddings where model_name = 'raw-model'")
    return elapsed


def bench_raw_pgvector_dumper(url: str, rows, batch: int) -> float:
    from pgvector.psycopg import register_vector

    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(RAW_DDL)
        started = time.perf_counter()
        for chunk in _batches(rows, batch):
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("copy raw_embeddings (section_id, embedding, token_count, content_hash) "
                              "from stdin (format binary)") as copy:
                    copy.set_types(["text", "vector", "int4", "bytea"])
                    for row in chunk:
                        copy.write_row(row)
        elapsed = time.perf_counter() - started
        assert conn.execute("select count(*) from raw_embeddings").fetchone()[0] == len(rows)
    return elapsed


def bench_per_row(url: str, rows, sample: int) -> float:
    from pgvector.psycopg import register_vector

    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        started = time.perf_counter()
        for section_id, vector, tokens, digest in rows[:sample]:
            conn.execute(
                "insert into section_embeddings (section_id, model_name, embedding, dimensions, content_hash, "
                "token_count, created_at) values (%s, %s, %s, %s, %s, %s, now()) "
                "on conflict (section_id, model_name) do update set embedding = excluded.embedding, "
                "dimensions = excluded.dimensions, content_hash = excluded.content_hash, "
                "token_count = excluded.token_count, created_at = excluded.created_at",
                (section_id, "per-row-model", vector, vector.shape[0], digest, tokens),
            )
        elapsed = time.perf_counter() - started
    return elapsed * len(rows) / sample


def encode_only(rows, batch: int) -> float:
    started = time.perf_counter()
    for chunk in _batches(rows, batch):
        for _piece in vector_writer.iter_copy_data(chunk, []):
            pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--batch", type=int, default=5000, help="rows per COPY/transaction (default 5000)")
    parser.add_argument("--per-row-sample", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each timed method; the best is kept")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    args = parser.parse_args()

    rows = _rows(args.rows, args.dims)
    mb = sum(len(r[0]) + 4 * args.dims + 28 for r in rows) / 1e6
    tmp = None
    embedded = None
    if args.database_url:
        admin_url = args.database_url
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-write-")
        embedded = EmbeddedPostgres(tmp.name)
        admin_url = embedded.url
    dbname = f"bench_write_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"create database {dbname}")
    url = embedded.url_for(dbname) if embedded else psycopg.conninfo.make_conninfo(admin_url, dbname=dbname)
    try:
        store = SupabaseStore(url)
        store.upsert_sections({"id": r[0], "title": "t", "content": "c"} for r in rows)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("vacuum analyze sections")
            conn.execute("checkpoint")

        def best(fn, *a):
            times = []
            for _ in range(args.repeat):
                times.append(fn(*a))
            return min(times)

        results = {}
        results["encode"] = best(encode_only, rows, args.batch)
        results["raw"] = best(bench_raw, url, rows, args.batch)
        results["raw_dumper"] = best(bench_raw_pgvector_dumper, url, rows, args.batch)
        results["raw_schema"] = best(bench_raw_into_schema, url, rows, args.batch)

        def ours_insert():
            with store.connection() as conn:
                conn.execute("truncate section_embeddings")
                conn.execute("checkpoint")
            return bench_ours(store, rows, args.batch)

        results["ours_insert"] = best(ours_insert)
        results["ours_update"] = best(bench_ours, store, rows, args.batch)
        with store.connection() as conn:
            stored = conn.execute("select count(*) from section_embeddings where model_name = 'bench-model'").fetchone()[0]
            sample_back = store.get_embedding(rows[123][0], "bench-model")
        assert stored == len(rows), stored
        assert np.array_equal(sample_back, rows[123][1]), "vector not stored verbatim"
        results["per_row"] = bench_per_row(url, rows, min(args.per_row_sample, len(rows)))
        store.close()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {dbname} with (force)")
        if embedded:
            embedded.stop()
        if tmp:
            tmp.cleanup()

    raw = results["raw"]
    n = args.rows

    schema = results["raw_schema"]

    def line(name, key, note=""):
        seconds = results[key]
        return [name, f"{seconds:.2f}", f"{n / seconds:,.0f}", f"{mb / seconds:.0f}", f"{raw / seconds:.2f}×",
                f"{schema / seconds:.2f}×", note]

    print(f"## Write path: {n:,} vectors × {args.dims} dims ({mb:.0f} MB of rows), "
          f"{args.batch} rows per transaction, database {mask_url(admin_url) if args.database_url else 'embedded (unix socket)'}\n")
    print(table(
        ["method", "seconds", "rows/s", "MB/s", "vs raw COPY, plain table", "vs raw COPY into section_embeddings",
         "note"],
        [
            line("raw binary COPY into a plain table", "raw", "no keys, no constraints; our encoder"),
            line("raw binary COPY into section_embeddings", "raw_schema",
                 "its PK, FK and check; no upsert (fails on any existing row)"),
            line("ours: COPY → temp table → one upsert (new rows)", "ours_insert",
                 "PK, FK, check constraint, failures cleared"),
            line("ours: same, every row an update", "ours_update", "ON CONFLICT DO UPDATE path"),
            line("raw COPY via pgvector's dumper (write_row)", "raw_dumper", "reference: client-side cost"),
            line("one upsert per row, autocommit", "per_row",
                 f"{min(args.per_row_sample, n):,} rows timed, scaled"),
            line("(client-side encoding alone)", "encode", "not a write; shows the client's share"),
        ],
    ))
    print()
    print(environment())


if __name__ == "__main__":
    main()
