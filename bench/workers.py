"""Workers: three `sections sync` processes share one tokens-per-minute limit.

6,000 sections wait in the database; three processes start at once against a simulator that
enforces the limit (its bucket, like OpenAI's, holds a minute's worth and starts full). With the
shared budget (the default) they reserve their requests in one schedule in the database; with
``--own-budget`` each learns the limit from the headers alone, as every other tool does. Ideal
time: the bucket at once, then tpm/60 tokens a second. Targets (shared): ≥ 0.95 of the ideal,
429s ≤ 10% of successful requests, every section embedded exactly once.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from bench.players import fresh_database
from bench.report import Result
from core.fingerprint import section_text
from core.postgres.embedded import EmbeddedPostgres
from core.sample_corpus import stdlib_sections
from core.simulator import SimulatorProcess, expected_embedding
from core.supabase_store import SupabaseStore

MODEL, DIMS, PROCESSES = "text-embedding-3-small", 16, 3
TARGET_EFFICIENCY, TARGET_429 = 0.95, 0.10


def _run_processes(sim: SimulatorProcess, url: str, own: bool) -> float:
    command = [sys.executable, "-m", "core.cli", "sync", "--model", MODEL, "--base-url", sim.base_url,
               "--database-url", url, "--dimensions", str(DIMS), "--json", *(["--own-budget"] if own else [])]
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
    started = time.perf_counter()
    running = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(PROCESSES)]
    errors = [process.communicate(timeout=900)[1] for process in running]
    elapsed = time.perf_counter() - started
    bad = [error for process, error in zip(running, errors) if process.returncode != 0]
    if bad:
        raise RuntimeError(f"a sync failed: {bad[0][-500:]}")
    return elapsed


def _wrong(url: str, sections: list[dict]) -> int:
    with psycopg.connect(url) as conn:
        register_vector(conn)
        stored = dict(conn.execute("select section_id, embedding from section_embeddings").fetchall())
    wrong = sum(1 for s in sections if s["id"] not in stored or not np.allclose(
        stored[s["id"]].to_numpy() if hasattr(stored[s["id"]], "to_numpy") else stored[s["id"]],
        expected_embedding(section_text(s["title"], s["content"]), MODEL, DIMS), atol=1e-6))
    return wrong


def run(quick: bool = False) -> Result:
    count, tpm = (600, 30_000) if quick else (6000, 150_000)
    sections = stdlib_sections(count, tokens_per_section=50)
    settings = {"tpm": tpm, "latency_base": 0.1}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as data, EmbeddedPostgres(data) as pg, \
            SimulatorProcess(**settings) as sim:
        for label, own in (("ours, shared budget (default)", False), ("ours, --own-budget (each learns alone)", True)):
            url = fresh_database(pg, f"bench_workers_{'own' if own else 'shared'}")
            with SupabaseStore(url) as store:
                store.upsert_sections(sections)
            sim.reset()
            seconds = _run_processes(sim, url, own)
            stats = sim.stats()
            ideal = max(0.0, stats["tokens"] - tpm) / (tpm / 60) + settings["latency_base"]
            ok = stats["by_status"].get("200", 0)
            rows.append([label, f"{seconds:.1f}", f"{ideal:.1f}", f"{ideal / seconds:.3f}",
                         f"{stats['tokens'] / seconds * 60 / tpm:.2f}", stats["rate_limited"], ok,
                         f"{stats['rate_limited'] / max(1, ok):.2f}", stats["inputs"], _wrong(url, sections)])
    shared = rows[0]
    met = (float(shared[3]) >= TARGET_EFFICIENCY and float(shared[7]) <= TARGET_429 and shared[8] == count
           and shared[9] == 0)
    verdict = (f"Shared budget: {shared[3]} of the ideal, {shared[7]} 429s per successful request, "
               f"{shared[8]:,} inputs served for {count:,} sections: targets (≥ {TARGET_EFFICIENCY}, "
               f"≤ {TARGET_429}, exactly once) {'met' if met else 'NOT met'}.")
    return Result(
        key="workers",
        title=f"Workers: {PROCESSES} `sections sync` processes, {count:,} sections, one {tpm:,} tokens-per-minute limit",
        conditions=(f"Simulator: {settings} (bucket = a minute's worth, starts full). Each variant on a fresh database "
                    f"of the embedded Postgres; one run each. Rate = tokens served per minute ÷ the limit (the "
                    f"first minute's full bucket counts too)."),
        header=["processes", "seconds", "ideal seconds", "efficiency (ideal/actual)", "rate ÷ limit", "429s",
                "successful requests", "429s per success", "inputs served", "wrong or missing vectors"],
        rows=rows, verdict=verdict,
        plot={"seconds": {row[0]: float(row[1]) for row in rows}},
    )
