"""Engine benchmark: 1,000 real-text sections of ~350 tokens against the simulator.

Scenario A (no rate limit, latency 0.2 s + 5 us/token), side by side in one run:
  - one request per section, sequential (the seed's "before"; a sample is timed and scaled),
  - the seed's plan as written (chunks of 2048 inputs, one request at a time, no token limit),
  - our deprecated ``batch_generate`` (100 inputs per request, now on the parallel engine),
  - our ``batch_generate_embeddings``.
Scenario B (a tokens-per-minute limit with a smaller bucket): sustained throughput against the
limit, failures, and 429s per successful request.

Run: ``python -m bench.bench_engine`` (``--help`` for sizes). Prints markdown tables.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from openai import OpenAI

from bench.report import environment, table
from core.embedding_service import EmbeddingService
from core.sample_corpus import stdlib_sections
from core.simulator import SimulatorProcess, expected_embedding


def _wrong(texts, indices, vectors) -> int:
    return sum(1 for i, v in zip(indices, vectors) if not np.allclose(v, expected_embedding(texts[i]), atol=1e-5))


def one_per_section(base_url: str, texts: list[str], sample: int) -> dict:
    client = OpenAI(api_key="bench", base_url=base_url, max_retries=0)
    started = time.perf_counter()
    for text in texts[:sample]:
        client.embeddings.create(model="text-embedding-3-small", input=text)
    elapsed = (time.perf_counter() - started) * len(texts) / sample
    return {"seconds": elapsed, "embedded": len(texts), "wrong": 0, "note": f"{sample} timed, scaled"}


def seed_plan_as_written(base_url: str, texts: list[str]) -> dict:
    """What the user's plan does: chunks of 2048 inputs, sequential, failures drop the chunk."""
    client = OpenAI(api_key="bench", base_url=base_url, max_retries=0)
    started = time.perf_counter()
    embedded, note = 0, "ok"
    for start in range(0, len(texts), 2048):
        try:
            response = client.embeddings.create(model="text-embedding-3-small", input=texts[start:start + 2048])
            embedded += len(response.data)
        except Exception as error:  # the plan's own handling: the whole chunk is lost
            note = f"{type(error).__name__}: {getattr(error, 'status_code', '')}"
    return {"seconds": time.perf_counter() - started, "embedded": embedded, "wrong": 0, "note": note}


def ours(base_url: str, texts: list[str], legacy: bool) -> dict:
    service = EmbeddingService(api_key="bench", base_url=base_url, cache_size=0)
    started = time.perf_counter()
    if legacy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            vectors = service.batch_generate(texts)
        indices = list(range(len(texts)))
    else:
        result = service.batch_generate_embeddings(texts)
        vectors, indices = result["embeddings"], result["indices"]
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "embedded": len(indices), "wrong": _wrong(texts, indices, vectors), "note": ""}


def scenario_a(texts: list[str], sample: int, repeats: int) -> tuple[list[list], dict]:
    settings = {"latency_base": 0.2, "latency_per_token": 5e-6}
    runs: dict[str, list[dict]] = {}
    with SimulatorProcess(**settings) as sim:
        runs["one request per section (seed's before)"] = [one_per_section(sim.base_url, texts, sample)]
        runs["seed plan as written (2048/request, sequential)"] = [seed_plan_as_written(sim.base_url, texts)]
        for _ in range(repeats):  # interleaved, so drift affects both alike
            runs.setdefault("ours: batch_generate (deprecated)", []).append(ours(sim.base_url, texts, legacy=True))
            runs.setdefault("ours: batch_generate_embeddings", []).append(ours(sim.base_url, texts, legacy=False))
    baseline = runs["one request per section (seed's before)"][0]["seconds"]
    rows = []
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        spread = f"{min(r['seconds'] for r in results):.3f}-{max(r['seconds'] for r in results):.3f}" if len(results) > 1 else "-"
        last = results[-1]
        rows.append([name, f"{seconds:.3f}", spread, f"{baseline / seconds:.0f}x" if last["embedded"] else "-",
                     f"{last['embedded']}/{len(texts)}", last["wrong"], last["note"]])
    return rows, settings


def scenario_b(texts: list[str], tpm: int, burst: int) -> tuple[list[list], dict]:
    """The streaming path (what the store uses) under a token budget."""
    settings = {"latency_base": 0.2, "latency_per_token": 5e-6, "tpm": tpm, "tpm_burst": burst}
    with SimulatorProcess(**settings) as sim:
        service = EmbeddingService(api_key="bench", base_url=sim.base_url, cache_size=0)
        started = time.perf_counter()
        failed = sum(1 for outcome in service.stream_embeddings(enumerate(texts), window_texts=len(texts))
                     if outcome.vector is None)
        elapsed = time.perf_counter() - started
        stats = sim.stats()
    tokens, successes = stats["tokens"], stats["by_status"].get("200", 0)
    # The server's bucket starts full; after it, it admits tpm/60 tokens a second at most, and the
    # last request admitted still takes its own latency to answer.
    last_latency = settings["latency_base"] + settings["latency_per_token"] * tokens / max(1, successes)
    ideal = max(0.0, tokens - burst) / (tpm / 60) + last_latency
    rows = [[
        len(texts), tokens, f"{elapsed:.2f}", f"{ideal:.2f}", f"{ideal / elapsed:.3f}",
        failed, stats["rate_limited"], successes, f"{stats['rate_limited'] / max(1, successes):.3f}",
    ]]
    return rows, settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=100, help="sections timed one by one for the baseline")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--limited-sections", type=int, default=5000)
    parser.add_argument("--tpm", type=int, default=6_000_000)
    parser.add_argument("--tpm-burst", type=int, default=1_000_000)
    args = parser.parse_args(argv)

    texts = [s["content"] for s in stdlib_sections(args.sections)]
    rows, settings = scenario_a(texts, args.sample, args.repeats)
    print(f"### Engine, {args.sections} sections of ~350 tokens, no rate limit\n")
    print(f"Simulator: {settings}. Median of {args.repeats} interleaved runs.\n")
    print(table(["player", "seconds", "spread", "speed-up vs one-by-one", "embedded", "wrong vectors", "note"], rows))

    limited = [s["content"] for s in stdlib_sections(args.limited_sections)]
    rows, settings = scenario_b(limited, args.tpm, args.tpm_burst)
    print(f"\n### Engine under a tokens-per-minute limit\n\nSimulator: {settings}. Ideal: the bucket's burst at "
          "once, then tpm/60 tokens a second, plus one request's latency for the last reply.\n")
    print(table(["sections", "tokens", "seconds", "ideal seconds", "efficiency (ideal/actual)", "failed",
                 "429s", "successful requests", "429s per success"], rows))
    print(f"\n{environment()}")


if __name__ == "__main__":
    main()
