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
import threading
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from bench.players import fresh_database
from bench.report import Result
from sections.fingerprint import section_text
from sections.postgres.embedded import EmbeddedPostgres
from sections.reading.sample_corpus import stdlib_sections
from sections.simulator.server import SimulatorProcess, expected_embedding
from sections.store.supabase_store import SupabaseStore

MODEL, DIMS, PROCESSES = "text-embedding-3-small", 16, 3
TARGET_EFFICIENCY, TARGET_429 = 0.95, 0.10


def _run_processes(sim: SimulatorProcess, url: str, own: bool) -> tuple[float, float]:
    """Wall seconds from launch, and seconds from the first request the provider saw (start-up
    of the three interpreters excluded: throughput is the provider's side of the run)."""
    command = [sys.executable, "-m", "sections.cli.app", "sync", "--model", MODEL, "--base-url", sim.base_url,
               "--database-url", url, "--dimensions", str(DIMS), "--json", *(["--own-budget"] if own else [])]
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
    started = time.perf_counter()
    first: list[float] = []
    done = threading.Event()

    def watch_first_request() -> None:
        while not done.is_set() and not first:
            if sim.stats()["requests"] > 0:
                first.append(time.perf_counter())
            done.wait(0.05)

    sampler = threading.Thread(target=watch_first_request, daemon=True)
    sampler.start()
    running = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(PROCESSES)]
    errors = [process.communicate(timeout=900)[1] for process in running]
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    bad = [error for process, error in zip(running, errors) if process.returncode != 0]
    if bad:
        raise RuntimeError(f"a sync failed: {bad[0][-500:]}")
    return elapsed, elapsed - ((first[0] if first else started) - started)


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
            wall, serving = _run_processes(sim, url, own)
            stats = sim.stats()
            ideal = max(0.0, stats["tokens"] - tpm) / (tpm / 60) + settings["latency_base"]
            ok = stats["by_status"].get("200", 0)
            rows.append([label, f"{wall:.1f}", f"{serving:.1f}", f"{ideal:.1f}", f"{ideal / serving:.3f}",
                         stats["rate_limited"], ok, f"{stats['rate_limited'] / max(1, ok):.2f}", stats["inputs"],
                         _wrong(url, sections)])
    shared = rows[0]
    distinct = len({section_text(s["title"], s["content"]) for s in sections})  # equal texts are sent once
    met = (float(shared[4]) >= TARGET_EFFICIENCY and float(shared[7]) <= TARGET_429 and shared[8] == distinct
           and shared[9] == 0)
    verdict = (f"Shared budget: {shared[4]} of the ideal, {shared[7]} 429s per successful request, "
               f"{shared[8]:,} inputs served for {count:,} sections ({distinct:,} distinct texts): targets "
               f"(≥ {TARGET_EFFICIENCY}, ≤ {TARGET_429}, each text once) {'met' if met else 'NOT met'}.")
    return Result(
        key="workers",
        title=f"Workers: {PROCESSES} `sections sync` processes, {count:,} sections, one {tpm:,} tokens-per-minute limit",
        conditions=(f"Simulator: {settings} (bucket = a minute's worth, starts full). Each variant on a fresh database "
                    f"of the embedded Postgres; one run each. Efficiency = ideal ÷ the seconds from the first "
                    f"request the simulator saw to the last process's exit (the wall column adds the start-up of "
                    f"three interpreters)."),
        header=["processes", "wall seconds", "seconds from first request", "ideal seconds", "efficiency (ideal/actual)",
                "429s", "successful requests", "429s per success", "inputs served", "wrong or missing vectors"],
        rows=rows, verdict=verdict,
        plot={"seconds": {row[0]: float(row[2]) for row in rows}},
    )
