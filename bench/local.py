"""Local model benchmark: our whole path against sentence-transformers' own ``encode``, same texts.

Both run the bundled all-MiniLM-L6-v2 on the same sections (stdlib docstrings that fit the
model's window, so both embed exactly the same tokens):
  - raw: ``SentenceTransformer.encode(texts, batch_size=8, normalize_embeddings=True)`` with every
    core, one call, vectors in memory;
  - ours, end to end: read a JSONL file (validated first), embed through ``EmbeddingService``
    (the engine and the local provider), store into the embedded Postgres (``SupabaseStore.ingest``).
Runs are interleaved (raw, ours, raw, ours, ...) so drift and neighbours' load hit both alike;
medians are reported, and the stored vectors are compared with the raw ones.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.players import fresh_database
from bench.report import Result, median, spread
from sections.postgres.embedded import EmbeddedPostgres
from sections.engine.service import EmbeddingService
from sections.reading.sample_corpus import stdlib_sections
from sections.reading.sources import open_sources
from sections.fingerprint import section_text
from sections.store.supabase_store import SupabaseStore


def run_raw(model, texts: list[str]) -> tuple[float, np.ndarray]:
    """Plain encode at its best here: every core for torch (our provider sets one thread per request
    in flight, process-wide), batch 8 (the fastest in a sweep of 4 to 256 on this CPU)."""
    import torch

    ours = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        started = time.perf_counter()
        vectors = model.encode(texts, batch_size=8, normalize_embeddings=True, show_progress_bar=False)
        return time.perf_counter() - started, np.asarray(vectors)
    finally:
        torch.set_num_threads(ours)


def run_ours(path: Path, pg: EmbeddedPostgres, database: str) -> tuple[float, dict]:
    with SupabaseStore(fresh_database(pg, database)) as store:
        service = EmbeddingService(model="all-MiniLM-L6-v2")
        started = time.perf_counter()
        source = open_sources([path])
        result = store.ingest(source, service, build_index=False)
        seconds = time.perf_counter() - started
        with store.connection() as conn:
            stored = dict(conn.execute("select section_id, embedding::real[] from section_embeddings").fetchall())
    assert result["success_count"] == source.count, result
    return seconds, stored


def run(quick: bool = False) -> Result:
    count, repeats = (20, 1) if quick else (500, 3)
    service = EmbeddingService(model="all-MiniLM-L6-v2")
    model = service.provider._model  # the same loaded SentenceTransformer, so both paths share weights
    window = service.limits.max_input_tokens
    sections = [s for s in stdlib_sections(count * 2, tokens_per_section=150)
                if service.tokenizer.count(section_text(s["title"], s["content"])) <= window][:count]
    texts = [section_text(s["title"], s["content"]) for s in sections]
    raw_times, our_times = [], []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(Path(tmp) / "data") as pg:
        path = Path(tmp) / "sections.jsonl"
        path.write_text("".join(json.dumps(s) + "\n" for s in sections), encoding="utf-8")
        for repeat in range(repeats):
            seconds, raw_vectors = run_raw(model, texts)
            raw_times.append(seconds)
            seconds, stored = run_ours(path, pg, f"local_{repeat}")
            our_times.append(seconds)
    difference = max(float(np.abs(np.asarray(stored[s["id"]]) - raw_vectors[i]).max()) for i, s in enumerate(sections))
    raw, ours = median(raw_times), median(our_times)
    tokens = sum(service.tokenizer.count(t) for t in texts)
    names = ("raw sentence-transformers encode (vectors in memory)", "ours: read JSONL → embed → store in Postgres")
    rows = [
        [names[0], f"{raw:.2f}", spread(raw_times, 2), f"{len(texts) / raw:.1f}", "1.00"],
        [names[1], f"{ours:.2f}", spread(our_times, 2), f"{len(texts) / ours:.1f}", f"{raw / ours:.2f}"],
    ]
    return Result(
        key="local",
        title=f"Local model, end to end: {len(texts)} sections ({tokens:,} model tokens), all-MiniLM-L6-v2 on "
              f"{service.provider.device}",
        conditions=(f"The bundled model, the same texts on both paths; median of {repeats} interleaved repeats. "
                    "Raw encode gets every core and batch 8 (its best here); ours reads and validates the file, "
                    f"embeds and writes into the embedded Postgres. Largest difference between a stored vector and "
                    f"the raw one: {difference:.1e}."),
        header=["path", "seconds", "spread", "sections/s", "throughput vs raw encode"],
        rows=rows, verdict=f"Ours end to end runs at {raw / ours:.2f} × the throughput of raw encode.",
        plot={"seconds": {names[0]: raw, names[1]: ours}},
    )
