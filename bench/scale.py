"""Scale: 10k, 100k and 1M sections ingested, each by a fresh process: time and peak memory.

Sections are generated (short synthetic text) and streamed from a generator into
``SupabaseStore.ingest`` against the simulator without latency, 384-d vectors, no index build.
Each size runs in its own process so its peak RSS is its own. Time should grow linearly with the
sections and memory should stay flat.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.players import API_KEY, fresh_database
from bench.report import Result
from sections.postgres.embedded import EmbeddedPostgres
from sections.engine.service import EmbeddingService
from sections.simulator.server import SimulatorProcess
from sections.store.supabase_store import SupabaseStore


def _generated(count: int):
    for i in range(count):
        yield {"id": f"gen-{i:07d}", "title": f"Section {i}",
               "content": f"Generated section number {i}: the quick brown fox jumps over the lazy dog {i % 97}."}


def _peak_rss_kb() -> int:
    """This process's own high-water mark. ``ru_maxrss`` is not: Linux carries it over from the
    forking parent through exec, so a child of a big process would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _worker(count: int, database_url: str, base_url: str) -> None:
    """Runs in a fresh process: ingest ``count`` generated sections, print time and peak RSS."""
    service = EmbeddingService(api_key=API_KEY, base_url=base_url, dimensions=384, cache_size=0)
    with SupabaseStore(database_url) as store:
        started = time.perf_counter()
        result = store.ingest(_generated(count), service, build_index=False)
        elapsed = time.perf_counter() - started
    print(json.dumps({"sections": count, "seconds": elapsed, "peak_rss_mb": _peak_rss_kb() / 1024,
                      "stored": result["success_count"]}))


def run(quick: bool = False) -> Result:
    sizes = [1_000, 2_000, 4_000] if quick else [10_000, 100_000, 1_000_000]
    reports = []
    with SimulatorProcess() as sim, tempfile.TemporaryDirectory() as data, EmbeddedPostgres(data) as pg:
        for size in sizes:
            url = fresh_database(pg, f"scale_{size}")
            out = subprocess.run([sys.executable, "-m", "bench.scale", str(size), url, sim.base_url],
                                 capture_output=True, text=True, check=True).stdout
            report = json.loads(out.strip().splitlines()[-1])
            assert report["stored"] == size, report
            reports.append(report)
    first = reports[0]
    per_section = [r["seconds"] / r["sections"] for r in reports]
    rows = [[f"{r['sections']:,}", f"{r['seconds']:.1f}", f"{r['sections'] / r['seconds']:,.0f}",
             f"{1e6 * s:.0f}", f"{s / per_section[0]:.2f}", f"{r['peak_rss_mb']:.0f}",
             f"{r['peak_rss_mb'] / first['peak_rss_mb']:.2f}"] for r, s in zip(reports, per_section)]
    last = reports[-1]
    return Result(
        key="scale",
        title="Scale: time and peak memory of an ingest",
        conditions=("Generated sections streamed from a generator, simulator without latency, 384-d vectors, "
                    "embedded Postgres, a fresh process per size (one run each)."),
        header=["sections", "seconds", "sections/s", "µs per section", "time per section vs smallest",
                "peak RSS (MB)", "RSS vs smallest"],
        rows=rows,
        verdict=(f"{last['sections'] // first['sections']}× the sections took "
                 f"{last['seconds'] / first['seconds']:.1f}× the time and {last['peak_rss_mb'] / first['peak_rss_mb']:.2f}× "
                 "the peak memory."),
        plot={"seconds": {r["sections"]: r["seconds"] for r in reports},
              "peak RSS (MB)": {r["sections"]: r["peak_rss_mb"] for r in reports}},
        plot_kind="lines", plot_ylabel="",
    )


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
