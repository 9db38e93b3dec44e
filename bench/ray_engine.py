"""Ray against one process: the same sections, the same local model, the same store.

Both ingest the same stdlib sections with the bundled all-MiniLM-L6-v2 into fresh databases of one
embedded Postgres:
  - one process: ``SupabaseStore.ingest`` with an ``EmbeddingService`` (the engine's own requests in
    flight, torch's threads shared between them);
  - Ray: ``ray_ingest`` on a local Ray with one actor per CPU (``--engine ray``'s default), each
    actor loading the model once per window.
Runs are interleaved (one process, Ray, one process, Ray …) so neighbours' load hits both alike;
medians reported. Ray's start-up is timed apart from the ingest, and stored vectors are compared.
On an idle 2-CPU machine Ray can only split the same two cores; on a shared one its actor processes
also draw a larger share of them from other tenants than one process does, which the table cannot
tell apart from a speed-up: the load average beside it says how busy the machine was.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.players import fresh_database
from bench.report import Result, median, spread
from sections.engine.service import EmbeddingService
from sections.postgres.embedded import EmbeddedPostgres
from sections.reading.sample_corpus import stdlib_sections
from sections.scale.actor import ServiceSpec
from sections.scale.ray_embedder import RayOptions
from sections.scale.ray_ingest import ray_ingest, ray_runtime
from sections.fingerprint import section_text
from sections.store.supabase_store import SupabaseStore

MODEL = "all-MiniLM-L6-v2"


def stored_vectors(store: SupabaseStore) -> dict[str, np.ndarray]:
    with store.connection() as conn:
        return {key: np.asarray(value) for key, value in
                conn.execute("select section_id, embedding::real[] from section_embeddings").fetchall()}


def one_process(sections: list[dict], url: str) -> tuple[float, dict[str, np.ndarray]]:
    with SupabaseStore(url) as store:
        service = EmbeddingService(model=MODEL)
        started = time.perf_counter()
        result = store.ingest(sections, service, build_index=False)
        seconds = time.perf_counter() - started
        assert result["success_count"] == len(sections), result
        return seconds, stored_vectors(store)


def on_ray(sections: list[dict], url: str, options: RayOptions) -> tuple[float, dict[str, np.ndarray]]:
    with SupabaseStore(url) as store:
        started = time.perf_counter()
        result = ray_ingest(store, sections, ServiceSpec(model=MODEL), options, build_index=False)
        seconds = time.perf_counter() - started
        assert result["success_count"] == len(sections), result
        return seconds, stored_vectors(store)


def run(quick: bool = False) -> Result:
    count, repeats = (40, 1) if quick else (1000, 2)
    service = EmbeddingService(model=MODEL)
    window = service.limits.max_input_tokens
    sections = [s for s in stdlib_sections(count * 2, tokens_per_section=150)
                if service.tokenizer.count(section_text(s["title"], s["content"])) <= window][:count]
    service.close()
    options = RayOptions(actors=1) if quick else RayOptions()  # one actor per CPU, as --engine ray runs by default
    process_times, ray_times, startups = [], [], []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(Path(tmp) / "data") as pg:
        for repeat in range(repeats):
            seconds, ours = one_process(sections, fresh_database(pg, f"ray_process_{repeat}"))
            process_times.append(seconds)
            url = fresh_database(pg, f"ray_ray_{repeat}")
            started = time.perf_counter()
            with ray_runtime():
                startups.append(time.perf_counter() - started)
                seconds, theirs = on_ray(sections, url, options)
            ray_times.append(seconds)
    difference = max(float(np.abs(ours[key] - theirs[key]).max()) for key in ours)
    one, ray = median(process_times), median(ray_times)
    cpus = os.cpu_count() or 1
    actors = options.actors or cpus
    names = ("one process (--engine process)", f"Ray: {actors} actors × 1 CPU, local Ray (--engine ray)")
    rows = [[names[0], f"{one:.1f}", spread(process_times, 1), f"{len(sections) / one:.1f}", "1.00"],
            [names[1], f"{ray:.1f}", spread(ray_times, 1), f"{len(sections) / ray:.1f}", f"{one / ray:.2f}"]]
    return Result(
        key="ray",
        title=f"Ray against one process: {len(sections)} sections, {MODEL} on {cpus} CPUs",
        conditions=(f"The same sections and bundled model on both paths, each into a fresh database of one embedded "
                    f"Postgres; median of {repeats} interleaved repeats. Ray's start-up (median "
                    f"{median(startups):.1f} s) is not in its time. Largest difference between the two paths' "
                    f"stored vectors: {difference:.1e}."),
        header=["engine", "seconds", "spread", "sections/s", "throughput vs one process"],
        rows=rows,
        verdict=(f"On {cpus} CPUs Ray ran at {one / ray:.2f} × one process's throughput. Both use the same cores; "
                 "on a machine shared with other work (see the load average) Ray's separate actor processes also "
                 "draw a larger share of them, so only more cores or GPUs than one process can use make it a gain."),
        plot={"seconds": {names[0]: one, names[1]: ray}},
    )
