"""Write path: 100,000 vectors of 384 dimensions into Postgres/pgvector, side by side.

In one run, against one fresh database of the embedded server, interleaved repeats of:
  - raw binary COPY into a plain table (no keys, no constraints), our client-side encoder: the
    ceiling for getting the bytes into Postgres;
  - raw binary COPY straight into ``section_embeddings`` (primary key, foreign key, check
    constraint, but no upsert: it would fail on any existing row): the ceiling for this schema;
  - ours: ``SupabaseStore.write_embeddings`` (binary COPY into a temporary table, one
    ``INSERT … ON CONFLICT DO UPDATE``, failures cleared), into an empty table and again over the
    same rows (every row an update);
  - LangChain's Postgres store (``langchain-postgres`` ``PGVector.add_embeddings``: one
    multi-row ``INSERT … ON CONFLICT`` through SQLAlchemy per call);
  - one upsert statement per row, each its own transaction (what the seed did through
    supabase-py): a sample is timed and scaled, once.
Every method writes the same rows in the same batches, one transaction per batch.
"""
from __future__ import annotations

import struct
import tempfile
import time

import numpy as np
import psycopg

from bench.players import fresh_database
from bench.report import Result, median, spread
from sections.postgres import vectors as vector_writer
from sections.postgres.embedded import EmbeddedPostgres
from sections.fingerprint import content_hash
from sections.store.supabase_store import SupabaseStore


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


def bench_langchain(url: str, rows, batch: int) -> float:
    """LangChain's PGVector, one ``add_embeddings`` call per batch (one call with all rows fails:
    five bind parameters a row pass Postgres's 65,535 limit above 13,107 rows)."""
    from langchain_core.embeddings import FakeEmbeddings
    from langchain_postgres import PGVector
    from sqlalchemy import create_engine

    dims = len(rows[0][1])
    engine = create_engine("postgresql+psycopg://" + url.split("://", 1)[1])
    store = PGVector(embeddings=FakeEmbeddings(size=dims), connection=engine, collection_name="bench",
                     embedding_length=dims, use_jsonb=True, pre_delete_collection=True)
    try:
        started = time.perf_counter()
        for chunk in _batches(rows, batch):
            store.add_embeddings([f"content {r[0]}" for r in chunk], [r[1].tolist() for r in chunk],
                                 ids=[r[0] for r in chunk])
        return time.perf_counter() - started
    finally:
        engine.dispose()


def run(quick: bool = False) -> Result:
    n, dims, batch, sample, repeats = (2_000, 384, 500, 100, 1) if quick else (100_000, 384, 5_000, 1_000, 3)
    rows = _rows(n, dims)
    mb = sum(len(r[0]) + 4 * dims + 28 for r in rows) / 1e6
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-write-") as data, EmbeddedPostgres(data) as pg:
        url = fresh_database(pg, "bench_write")
        with SupabaseStore(url) as store:
            store.upsert_sections({"id": r[0], "title": "t", "content": "c"} for r in rows)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("vacuum analyze sections")

            def ours_insert() -> float:
                with store.connection() as conn:
                    conn.execute("truncate section_embeddings")
                    conn.execute("checkpoint")
                return bench_ours(store, rows, batch)

            methods = {
                "raw binary COPY into a plain table": lambda: bench_raw(url, rows, batch),
                "raw binary COPY into section_embeddings": lambda: bench_raw_into_schema(url, rows, batch),
                "ours: COPY → temp table → one upsert (new rows)": ours_insert,
                "ours: same, every row an update": lambda: bench_ours(store, rows, batch),
                "LangChain PGVector.add_embeddings": lambda: bench_langchain(url, rows, batch),
            }
            for _ in range(repeats):
                for name, method in methods.items():
                    times.setdefault(name, []).append(method())
            with store.connection() as conn:
                stored = conn.execute("select count(*) from section_embeddings where model_name = 'bench-model'"
                                      ).fetchone()[0]
            assert stored == n, stored
            assert np.array_equal(store.get_embedding(rows[n // 2][0], "bench-model"), rows[n // 2][1])
            per_row = f"one upsert per row, autocommit ({sample:,} rows timed, scaled)"
            times[per_row] = [bench_per_row(url, rows, sample)]
    plain = median(times["raw binary COPY into a plain table"])
    schema = median(times["raw binary COPY into section_embeddings"])
    result_rows, plot = [], {}
    for name, values in times.items():
        seconds = median(values)
        result_rows.append([name, f"{seconds:.2f}", spread(values, 2), f"{n / seconds:,.0f}", f"{plain / seconds:.2f}",
                            f"{schema / seconds:.2f}"])
        plot[name] = seconds
    ours = schema / median(times["ours: COPY → temp table → one upsert (new rows)"])
    return Result(
        key="write",
        title=f"Write path: {n:,} vectors × {dims} dimensions ({mb:.0f} MB of rows)",
        conditions=(f"Embedded Postgres over its unix socket, {batch:,} rows per transaction for every method, "
                    f"median of {repeats} interleaved repeats. LangChain also stores a short document text and "
                    "empty metadata per row; ours and the raw COPYs store id, vector, token count and content hash."),
        header=["method", "seconds", "spread", "rows/s", "× raw COPY (plain table)", "× raw COPY (section_embeddings)"],
        rows=result_rows,
        verdict=(f"Ours writes new rows at {ours:.2f} × the speed of a raw binary COPY into the same keyed table, "
                 f"{plain / median(times['ours: COPY → temp table → one upsert (new rows)']):.2f} × a COPY into a "
                 "table with no keys."),
        plot={"seconds": plot}, plot_log=True,
    )
