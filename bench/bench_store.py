"""Store benchmark: embedding and writing overlap, and memory stays flat as the corpus grows.

W1 (side by side in one run): 1,000 sections of ~350 tokens, simulator latency 0.2 s + 5 us/token,
1,536-d vectors: the engine alone (``stream_embeddings``) vs the whole ingest into the embedded
Postgres (``batch_ingest_embeddings``: upsert sections, hash, embed, COPY vectors). Target: the
whole ingest in <= 0.8 s.

Scale: peak RSS of a fresh process that ingests 10k vs 100k generated sections (streamed from a
generator, 384-d, no latency). Target: within 20% of each other.

Run: ``python -m bench.bench_store``. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg
from psycopg import sql

from bench.report import environment, table
from core.embedded_db import EmbeddedPostgres
from core.embedding_service import EmbeddingService
from core.sample_corpus import stdlib_sections
from core.simulator import SimulatorProcess
from core.supabase_store import SupabaseStore, section_text


def fresh_database(pg: EmbeddedPostgres, name: str) -> str:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return pg.url_for(name)


def w1(repeats: int) -> list[list]:
    sections = stdlib_sections(1000)
    texts = [(s["id"], section_text(s["title"], s["content"])) for s in sections]
    embed_only, end_to_end = [], []
    with SimulatorProcess(latency_base=0.2, latency_per_token=5e-6) as sim, \
            tempfile.TemporaryDirectory() as data, EmbeddedPostgres(data) as pg:
        for repeat in range(repeats):
            service = EmbeddingService(api_key="bench", base_url=sim.base_url, cache_size=0)
            started = time.perf_counter()
            assert sum(o.vector is not None for o in service.stream_embeddings(texts)) == len(texts)
            embed_only.append(time.perf_counter() - started)

            with SupabaseStore(fresh_database(pg, f"w1_{repeat}")) as store:
                service = EmbeddingService(api_key="bench", base_url=sim.base_url, cache_size=0)
                started = time.perf_counter()
                result = store.batch_ingest_embeddings(sections, service)
                end_to_end.append(time.perf_counter() - started)
                assert result["success_count"] == len(sections), result
    a, b = statistics.median(embed_only), statistics.median(end_to_end)
    return [
        ["engine only (stream_embeddings)", f"{a:.3f}", f"{min(embed_only):.3f}-{max(embed_only):.3f}", "1.00"],
        ["ingest into Postgres (batch_ingest_embeddings)", f"{b:.3f}", f"{min(end_to_end):.3f}-{max(end_to_end):.3f}",
         f"{b / a:.2f}"],
    ]


def _generated(count: int):
    for i in range(count):
        yield {"id": f"gen-{i:07d}", "title": f"Section {i}",
               "content": f"Generated section number {i}: the quick brown fox jumps over the lazy dog {i % 97}."}


def _scale_worker(count: int, database_url: str, base_url: str) -> None:
    """Runs in a fresh process: ingest ``count`` generated sections, report time and peak RSS."""
    service = EmbeddingService(api_key="bench", base_url=base_url, dimensions=384, cache_size=0)
    with SupabaseStore(database_url) as store:
        started = time.perf_counter()
        result = store.ingest(_generated(count), service, build_index=False)
        elapsed = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"sections": count, "seconds": elapsed, "peak_rss_mb": peak_kb / 1024,
                      "stored": result["success_count"]}))


def scale(sizes: list[int]) -> list[list]:
    rows = []
    with SimulatorProcess() as sim, tempfile.TemporaryDirectory() as data, EmbeddedPostgres(data) as pg:
        for size in sizes:
            url = fresh_database(pg, f"scale_{size}")
            SupabaseStore(url).close()  # create and migrate the database outside the measured process
            out = subprocess.run([sys.executable, "-m", "bench.bench_store", "--scale-worker", str(size), url,
                                  sim.base_url], capture_output=True, text=True, check=True).stdout
            report = json.loads(out.strip().splitlines()[-1])
            assert report["stored"] == size, report
            rows.append(report)
    first = rows[0]
    return [[r["sections"], f"{r['seconds']:.1f}", f"{r['sections'] / r['seconds']:.0f}",
             f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] / first['peak_rss_mb']:.2f}"] for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--scale-worker", nargs=3, metavar=("COUNT", "DATABASE_URL", "BASE_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale_worker:
        count, database_url, base_url = args.scale_worker
        _scale_worker(int(count), database_url, base_url)
        return
    print("### W1: 1,000 sections of ~350 tokens embedded and stored\n")
    print(f"Simulator latency 0.2 s + 5 us/token, 1,536-d vectors, embedded Postgres. Median of {args.repeats}, "
          "interleaved.\n")
    print(table(["path", "seconds", "spread", "ratio to engine only"], w1(args.repeats)))
    print("\n### Scale: peak memory of an ingest (fresh process each)\n")
    print("Generated sections streamed from a generator, 384-d vectors, simulator without latency.\n")
    print(table(["sections", "seconds", "sections/s", "peak RSS (MB)", "RSS vs smallest"], scale(args.sizes)))
    print(f"\n{environment()}")


if __name__ == "__main__":
    main()
