"""``sections ingest --engine ray`` as users run it: real subprocesses on Ray, against the simulator
over HTTP and the embedded Postgres; and ``ray_ingest`` given a Ray Dataset.

Ray starts slowly, so the module starts one local Ray and the runs join it (``--ray-address``),
as they would join a cluster; one run starts its own local Ray, as a run on a laptop does. The
simulator's ``/stats`` proves what was paid for: inputs served against sections stored.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sections.fingerprint import section_text
from sections.simulator.server import expected_embedding

MODEL = "text-embedding-3-small"
DIMS = 16
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (2 CPUs, as this machine has); yields its address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def corpus(path: Path, count: int) -> list[dict[str, str]]:
    rows = [{"id": f"s{i:05d}", "title": f"Section {i}", "content": f"Text of section {i}: {'word ' * (i % 13)}end."}
            for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def command(path: Path, sim, database_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sections", "ingest", str(path), "--model", MODEL, "--base-url", sim.base_url,
            "--database-url", database_url, "--dimensions", str(DIMS), "--engine", "ray", "--json", *extra]


def env() -> dict[str, str]:
    """This process's environment as it is now: joining the module's Ray needs what ``ray.init`` set
    (``RAY_AUTH_MODE``), as a user joining a cluster sets it."""
    return {**os.environ, "OPENAI_API_KEY": "sk-test"}


def run(argv: list[str], timeout: float = 240) -> tuple[int, dict, str]:
    done = subprocess.run(argv, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=timeout)
    summary = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    return done.returncode, summary, done.stderr


def stored(db) -> dict[str, np.ndarray]:
    return {row[0]: np.asarray(row[1]) for row in
            db.execute("select section_id, embedding from section_embeddings where model_name = %s", (MODEL,))}


def assert_each_vector_is_its_own(db, rows: list[dict[str, str]]) -> None:
    vectors = stored(db)
    assert sorted(vectors) == sorted(row["id"] for row in rows)
    for row in rows:
        want = expected_embedding(section_text(row["title"], row["content"]), MODEL, DIMS)
        assert np.allclose(vectors[row["id"]], want, atol=1e-6), row["id"]


def test_a_local_ray_run_stores_every_vector_once_and_a_rerun_sends_nothing(sim, database_url, db, tmp_path,
                                                                            ray_cluster):
    rows = corpus(tmp_path / "s.jsonl", 600)
    code, summary, err = run(command(tmp_path / "s.jsonl", sim, database_url, "--ray-actors", "2"))
    assert code == 0, err
    assert summary["embedded"] == 600 and summary["failed"] == 0 and summary["tokens"] > 0
    assert_each_vector_is_its_own(db, rows)
    assert sim.stats()["inputs"] == 600
    assert "Traceback" not in err
    # a rerun over the finished store (joining the module's Ray, as a run joins a cluster): nothing sent
    code, summary, err = run(command(tmp_path / "s.jsonl", sim, database_url, "--ray-address", ray_cluster))
    assert code == 0, err
    assert summary["embedded"] == 0 and summary["unchanged"] == 600
    assert sim.stats()["inputs"] == 600
    assert db.execute("select count(*) from section_leases").fetchone()[0] == 0


def test_killed_mid_run_then_rerun_pays_only_for_what_was_in_flight(sim, database_url, db, tmp_path, ray_cluster):
    total = 4000
    rows = corpus(tmp_path / "s.jsonl", total)
    sim.configure(latency_base=0.3)  # 0.3 s per actor batch: the kill lands while batches are in flight
    argv = command(tmp_path / "s.jsonl", sim, database_url, "--ray-address", ray_cluster, "--ray-actors", "2",
                   "--ray-batch-size", "64")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 180
        while process.poll() is None and time.monotonic() < deadline and len(stored(db)) < 1200:
            time.sleep(0.05)
        assert process.poll() is None, f"the run ended before the kill: {process.communicate()[1][-3000:]}"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    time.sleep(2)  # the killed run's actors are ended with its job; what they had sent is answered by now
    at_kill = len(stored(db))
    paid_at_kill = sim.stats()["inputs"]
    assert 1200 <= at_kill < total
    code, summary, err = run(argv)
    assert code == 0, err
    assert summary["embedded"] == total - at_kill
    assert_each_vector_is_its_own(db, rows)
    paid = sim.stats()["inputs"]
    assert paid - paid_at_kill == total - at_kill  # the rerun sent exactly what was missing
    assert paid <= 1.15 * total, f"paid {paid} inputs for {total} sections"


def test_a_ray_dataset_through_the_library_api(sim, store, db, ray_cluster):
    import ray.data

    from sections.scale.actor import ServiceSpec
    from sections.scale.ray_embedder import RayOptions
    from sections.scale.ray_ingest import ray_ingest

    rows = [{"id": f"d{i:04d}", "title": f"T{i}", "content": f"dataset row {i}", "metadata": {"n": i}}
            for i in range(300)]
    rows.append({"id": "blank", "title": "", "content": "   "})
    os.environ.setdefault("OPENAI_API_KEY", "sk-test")
    spec = ServiceSpec(model=MODEL, base_url=sim.base_url, dimensions=DIMS)
    summary = ray_ingest(store, ray.data.from_items(rows), spec, RayOptions(actors=2, batch_size=64))
    assert summary["success_count"] == 300 and summary["failed_ids"] == ["blank"]
    assert_each_vector_is_its_own(db, rows[:300])
    assert db.execute("select metadata->>'n' from sections where id = 'd0007'").fetchone()[0] == "7"
    again = ray_ingest(store, ray.data.from_items(rows), spec, RayOptions(actors=2))
    assert again["success_count"] == 0 and again["skipped_count"] == 300
    assert sim.stats()["inputs"] == 300


@pytest.mark.parametrize("extra, message", [
    (["--batch-api"], "choose one"),
    (["--ray-actors", "0"], "at least 1"),
])
def test_bad_ray_options_are_one_line_before_anything_starts(sim, database_url, tmp_path, extra, message):
    corpus(tmp_path / "s.jsonl", 3)
    code, _, err = run(command(tmp_path / "s.jsonl", sim, database_url, *extra))
    assert code == 1 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_ray_options_without_the_ray_engine_are_refused(sim, database_url, tmp_path):
    corpus(tmp_path / "s.jsonl", 3)
    argv = [arg for arg in command(tmp_path / "s.jsonl", sim, database_url) if arg not in ("--engine", "ray")]
    code, _, err = run([*argv, "--ray-address", "auto"])
    assert code == 1 and "need --engine ray" in err


def test_neither_import_sections_nor_the_command_loads_ray():
    probe = ("import sys, sections, sections.cli.app, sections.cli.ray_engine; "
             "from sections import SupabaseStore, EmbeddingService; "
             "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT, env=env())
