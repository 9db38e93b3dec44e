"""Workers: three `sections sync` processes share one tokens-per-minute limit.

6,000 sections wait in the database; three processes start at once against a simulator that
enforces the limit (its bucket starts full). Two runs: a minute-long bucket over a 67-second run,
where a lost burst hardly shows, and a 4-second bucket over a 30-second run (the common `sync` or
`watch` job of a few thousand changed sections), where spending the burst the provider granted is
an eighth of the run. With the shared budget (the default) the processes reserve their requests
in one schedule in the database; with ``--own-budget`` each learns the limit from the headers
alone, as every other tool does. Ideal time: the bucket at once, then tpm/60 tokens a second, plus
the reply to one last section. Targets (shared): ≥ 0.95 of the ideal, 429s ≤ 10% of successful
requests on the minute-long run and ≤ 3% on the short one, every section embedded exactly once.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

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
TARGET_EFFICIENCY = 0.95


@dataclass(frozen=True)
class Case:
    """One run: the sections waiting and the provider's limit."""

    name: str
    count: int
    tokens_per_section: int
    settings: dict[str, Any]
    target_429: float  # 429s per successful request

    @property
    def burst(self) -> int:
        return self.settings.get("tpm_burst") or self.settings["tpm"]

    def ideal(self, tokens: int) -> float:
        s = self.settings
        return (max(0, tokens - self.burst) / (s["tpm"] / 60) + s["latency_base"]
                + s.get("latency_per_token", 0.0) * tokens / self.count)


CASES = (
    Case("minute bucket", 6000, 50, {"tpm": 150_000, "latency_base": 0.1}, 0.10),
    Case("4-second bucket", 6000, 450, {"tpm": 5_000_000, "tpm_burst": 333_333, "latency_base": 0.2,
                                        "latency_per_token": 5e-6}, 0.03),
)
QUICK = (
    Case("minute bucket", 600, 50, {"tpm": 30_000, "latency_base": 0.1}, 0.10),
    Case("4-second bucket", 300, 350, {"tpm": 3_000_000, "tpm_burst": 200_000, "latency_base": 0.2,
                                       "latency_per_token": 5e-6}, 0.03),
)


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


def run_case(pg: EmbeddedPostgres, case: Case, own: bool) -> list:
    """One table row: ``case`` with the shared budget, or with each process on its own."""
    sections = stdlib_sections(case.count, tokens_per_section=case.tokens_per_section)
    distinct = len({section_text(s["title"], s["content"]) for s in sections})  # equal texts are sent once
    name = f"bench_workers_{case.settings['tpm']}_{'own' if own else 'shared'}"
    url = fresh_database(pg, name)
    with SupabaseStore(url) as store:
        store.upsert_sections(sections)
    with SimulatorProcess(**case.settings) as sim:
        wall, serving = _run_processes(sim, url, own)
        stats = sim.stats()
    ideal = case.ideal(stats["tokens"])
    ok = stats["by_status"].get("200", 0)
    variant = "own budget (--own-budget)" if own else "shared budget (default)"
    return [case.name, variant, f"{wall:.1f}", f"{serving:.1f}", f"{ideal:.1f}", f"{ideal / serving:.3f}",
            stats["rate_limited"], ok, f"{stats['rate_limited'] / max(1, ok):.3f}",
            f"{stats['inputs']:,} of {distinct:,}", _wrong(url, sections)]


def _met(case: Case, row: list) -> bool:
    served, distinct = (int(n.replace(",", "")) for n in row[9].split(" of "))
    return (float(row[5]) >= TARGET_EFFICIENCY and float(row[8]) <= case.target_429 and served == distinct
            and row[10] == 0)


def run(quick: bool = False) -> Result:
    cases = QUICK if quick else CASES
    rows, verdicts = [], []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as data, EmbeddedPostgres(data) as pg:
        for case in cases:
            shared, own = run_case(pg, case, own=False), run_case(pg, case, own=True)
            rows += [shared, own]
            verdicts.append(f"{case.name}: shared {shared[5]} of the ideal, {shared[8]} 429s per success "
                            f"(targets ≥ {TARGET_EFFICIENCY}, ≤ {case.target_429}, each text once: "
                            f"{'met' if _met(case, shared) else 'NOT met'})")
    return Result(
        key="workers",
        title=f"Workers: {PROCESSES} `sections sync` processes, {cases[0].count:,} sections, one tokens-per-minute limit",
        conditions=("Simulator: " + "; ".join(f"{case.name}: {case.settings}, {case.tokens_per_section} tokens a "
                                              f"section" for case in cases)
                    + ". Each bucket starts full. Each variant on a fresh database of the embedded Postgres; one run "
                      "each. Efficiency = ideal ÷ the seconds from the first request the simulator saw to the last "
                      "process's exit (the wall column adds the start-up of three interpreters)."),
        header=["run", "processes", "wall seconds", "seconds from first request", "ideal seconds",
                "efficiency (ideal/actual)", "429s", "successful requests", "429s per success",
                "inputs served (of distinct texts)", "wrong or missing vectors"],
        rows=rows, verdict="; ".join(verdicts) + ".",
        plot={"seconds": {f"{row[0]}, {row[1]}": float(row[3]) for row in rows}},
    )
