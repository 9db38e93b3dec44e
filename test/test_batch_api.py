"""``--batch-api`` end to end: the ``sections`` command as a subprocess, the simulator's Batch API
over HTTP, the embedded Postgres read back with SQL. Every stored vector is checked against the
simulator's vector for its own section's text; ``/stats`` proves what was sent and how often."""
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

from core.embedding_service import EmbeddingService
from sections.simulator.server import expected_embedding
from sections.engine.tokens import TiktokenTokenizer

MODEL = "text-embedding-3-small"
DIMS = 16
ENV = {**os.environ, "OPENAI_API_KEY": "sk-test"}


def sections_cli(*args: object, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sections.cli.app", *map(str, args)], capture_output=True, text=True,
                          input="", timeout=timeout, env=ENV)


def embedding(sim, database_url) -> list[str]:
    return ["--model", MODEL, "--base-url", sim.base_url, "--database-url", database_url, "--dimensions", str(DIMS)]


def corpus(path: Path, n: int, special: dict[int, str] | None = None) -> dict[str, str]:
    """``n`` sections in a JSONL file; returns id → the text embedded for it."""
    texts = {f"s{i:05d}": (special or {}).get(i, f"section {i} of the backfill says something of its own")
             for i in range(n)}
    path.write_text("".join(json.dumps({"id": sid, "content": text}) + "\n" for sid, text in texts.items()))
    return texts


def summary_of(result: subprocess.CompletedProcess[str]) -> dict:
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def stored(db) -> dict[str, np.ndarray]:
    rows = db.execute("select section_id, embedding from section_embeddings where model_name = %s", (MODEL,))
    return {section_id: np.asarray(vector, dtype=np.float32) for section_id, vector in rows.fetchall()}


def check_vectors(db, texts: dict[str, str], elsewhere: set[str] = frozenset()) -> None:
    """Exactly the sections of ``texts`` stored, each once with the simulator's vector for its own text
    (those in ``elsewhere`` are checked by the test itself)."""
    vectors = stored(db)
    assert set(vectors) == set(texts)
    wrong = [sid for sid, vector in vectors.items() if sid not in elsewhere
             and not np.allclose(vector, expected_embedding(texts[sid], MODEL, DIMS), atol=1e-6)]
    assert not wrong, f"{len(wrong)} vectors are not their own text's, e.g. {wrong[:3]}"


def jobs(db) -> list[tuple]:
    return db.execute("select status, sections, written, retried, collected_at is not null from section_batch_jobs "
                      "order by created_at").fetchall()


def open_items(db) -> int:
    return db.execute("select count(*) from section_batch_items").fetchone()[0]


def test_a_backfill_of_thousands_is_one_job_at_half_price_and_each_section_gets_its_own_vector(
        sim, database_url, db, tmp_path):
    long_text = "A long chapter. " + " ".join(f"word{i}" for i in range(9000))  # over 8,191 tokens: averaged
    texts = corpus(tmp_path / "c.jsonl", 3000, {7: "the same text twice", 8: "the same text twice", 9: long_text})
    dry = summary_of(sections_cli("ingest", tmp_path / "c.jsonl", *embedding(sim, database_url), "--dry-run", "--json"))
    assert dry["would_embed"] == 3000 and dry["estimated_cost_usd"] > 0  # the Batch API's estimate beside it:
    assert dry["estimated_batch_cost_usd"] == pytest.approx(dry["estimated_cost_usd"] / 2, abs=1e-6)
    done = sections_cli("ingest", tmp_path / "c.jsonl", *embedding(sim, database_url), "--batch-api", "--json")
    assert done.returncode == 0, done.stderr
    summary = summary_of(done)
    assert summary["embedded"] == 3000 and summary["failed"] == 0
    assert summary["jobs_submitted"] == 1 and summary["jobs_collected"] == 1 and summary["jobs_open"] == 0
    assert summary["estimated_cost_usd"] == summary["batch_cost_usd"] == pytest.approx(summary["sync_cost_usd"] / 2,
                                                                                        abs=1e-6)
    stats = sim.stats()
    assert stats["batches"] == 1 and stats["inputs"] == 0  # nothing went through the synchronous endpoint
    pieces = len(TiktokenTokenizer().split(long_text, 8191))
    assert pieces > 1 and stats["batch_inputs"] == 2997 + 1 + pieces  # the twins sent once, the long one in pieces
    assert summary["tokens"] == stats["batch_tokens"]

    check_vectors(db, texts, elsewhere={"s00009"})
    with EmbeddingService(model=MODEL, base_url=sim.base_url, api_key="k", dimensions=DIMS) as service:
        synchronous = np.asarray(service.generate_embedding(long_text), dtype=np.float32)
    assert np.allclose(stored(db)["s00009"], synchronous, atol=1e-6)  # the synchronous path's mean, exactly
    assert jobs(db) == [("completed", 3000, 3000, 0, True)] and open_items(db) == 0

    again = summary_of(sections_cli("ingest", tmp_path / "c.jsonl", *embedding(sim, database_url), "--batch-api",
                                    "--json"))
    assert again["embedded"] == 0 and again["unchanged"] == 3000 and sim.stats()["batches"] == 1

    listing = summary_of(sections_cli("batches", "--database-url", database_url, "--json"))
    assert [(job["status"], job["collected"], job["requests"], job["written"]) for job in listing] == [
        ("completed", True, {"total": 2, "completed": 2, "failed": 0}, 3000)]
    assert listing[0]["estimated_cost_usd"] > 0 and listing[0]["age_s"] >= 0 and listing[0]["batch_id"]


def test_a_poisoned_input_fails_alone_and_nothing_stored_is_sent_again(sim, database_url, db, tmp_path):
    sim.configure(poison=["POISON"])
    texts = corpus(tmp_path / "c.jsonl", 2100, {2099: "this one holds POISON"})  # requests of 2,048 and 52
    done = sections_cli("ingest", tmp_path / "c.jsonl", *embedding(sim, database_url), "--batch-api", "--json")
    assert done.returncode == 2, done.stderr
    summary = summary_of(done)
    assert summary["embedded"] == 2099 and summary["failed"] == 1 and summary["failed_ids"] == ["s02099"]
    assert "POISON" in summary["failure_reasons"][0]["reason"] and "rejected (400)" in summary["failure_reasons"][0]["reason"]
    check_vectors(db, {sid: text for sid, text in texts.items() if sid != "s02099"})
    stats = sim.stats()
    # job 1: both requests, the 52-input one refused whole; job 2: those 52 alone, one request each
    assert stats["batches"] == 2 and stats["batch_requests"] == 2 + 52 and stats["batch_inputs"] == 2048 + 51
    assert db.execute("select section_id, reason from embedding_failures").fetchall()[0][0] == "s02099"
    assert [row[:4] for row in jobs(db)] == [("completed", 2100, 2048, 52), ("completed", 52, 51, 0)]


def test_kill_9_while_waiting_then_a_rerun_submits_no_second_job_and_stores_everything_once(
        sim, database_url, db, tmp_path):
    sim.configure(batch_delay=5.0)
    texts = corpus(tmp_path / "c.jsonl", 1000)
    command = [sys.executable, "-m", "sections.cli.app", "ingest", str(tmp_path / "c.jsonl"), *embedding(sim, database_url),
               "--batch-api"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + 90
        while not db.execute("select count(*) from section_batch_jobs where batch_id is not null").fetchone()[0]:
            assert process.poll() is None and time.monotonic() < deadline, "no job was recorded"
            time.sleep(0.1)
        time.sleep(0.5)  # waiting now
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert sim.stats()["batches"] == 1 and open_items(db) == 1000 and not stored(db)

    # a synchronous run meanwhile leaves the covered sections to their job: nothing is paid twice
    # (--no-wait: a run that waits would wait for the job to be collected; exit 3 says what is left)
    impatient = sections_cli("ingest", tmp_path / "c.jsonl", *embedding(sim, database_url), "--json", "--no-wait")
    meanwhile = summary_of(impatient)
    assert impatient.returncode == 3, impatient.stderr
    assert meanwhile["busy"] == 1000 and meanwhile["embedded"] == 0 and sim.stats()["inputs"] == 0

    rerun = sections_cli("ingest", tmp_path / "c.jsonl", *embedding(sim, database_url), "--batch-api", "--json")
    assert rerun.returncode == 0, rerun.stderr
    summary = summary_of(rerun)
    # written from the job it resumed; the counts add up to what was read (none is also "unchanged")
    assert summary["embedded"] == 1000 and summary["unchanged"] == 0 and summary["jobs_submitted"] == 0
    assert sim.stats()["batches"] == 1 and sim.stats()["batch_inputs"] == 1000
    check_vectors(db, texts)
    assert jobs(db) == [("completed", 1000, 1000, 0, True)] and open_items(db) == 0
    assert db.execute("select count(*) from section_workers").fetchone()[0] == 0


@pytest.mark.parametrize("fallback", [False, True], ids=["new-job", "fallback"])
def test_an_expired_batch_delivers_what_finished_and_only_the_rest_is_sent_again(
        fallback, sim, database_url, db, tmp_path):
    sim.configure(batch_expire_after=1)  # one request of each batch runs, then it expires
    texts = corpus(tmp_path / "c.jsonl", 3000)  # two requests: 2,048 and 952 inputs
    done = sections_cli("ingest", tmp_path / "c.jsonl", *embedding(sim, database_url), "--batch-api", "--json",
                        *(["--fallback"] if fallback else []))
    assert done.returncode == 0, done.stderr
    summary = summary_of(done)
    assert summary["embedded"] == 3000 and summary["failed"] == 0
    check_vectors(db, texts)
    stats = sim.stats()
    delivered = stats["batch_inputs"] if fallback else jobs(db)[0][2]  # by the request that ran before the expiry
    assert delivered in (2048, 952)
    if fallback:  # the expired request's inputs went through the synchronous path, at full price
        assert stats["batches"] == 1 and stats["inputs"] == 3000 - delivered
        assert jobs(db) == [("expired", 3000, 3000, 0, True)]
        assert summary["sync_cost_usd"] > summary["estimated_cost_usd"] > summary["batch_cost_usd"]
    else:  # in a new job, at the batch price; nothing that finished is sent again
        assert stats["batches"] == 2 and stats["batch_inputs"] == 3000 and stats["inputs"] == 0
        assert jobs(db) == [("expired", 3000, delivered, 3000 - delivered, True),
                            ("completed", 3000 - delivered, 3000 - delivered, 0, True)]
        assert summary["retried_count"] == 3000 - delivered


@pytest.mark.parametrize("limit, flag", [({"batch_max_inputs": 1000}, ["--batch-max-inputs", "1000"]),
                                         ({"batch_max_bytes": 60_000}, ["--batch-max-bytes", "60000"])],
                         ids=["inputs", "bytes"])
def test_a_file_that_would_pass_a_limit_is_split_into_several_jobs(limit, flag, sim, database_url, db, tmp_path):
    sim.configure(**limit)  # the server refuses a file past the limit: a split that misses fails the test
    texts = corpus(tmp_path / "c.jsonl", 3000)
    done = sections_cli("ingest", tmp_path / "c.jsonl", *embedding(sim, database_url), "--batch-api", "--json", *flag)
    assert done.returncode == 0, done.stderr
    summary = summary_of(done)
    assert summary["jobs_submitted"] >= 3 and summary["embedded"] == 3000
    assert {row[0] for row in jobs(db)} == {"completed"} and len(jobs(db)) == summary["jobs_submitted"]
    assert sim.stats()["batch_inputs"] == 3000
    check_vectors(db, texts)


def test_no_wait_then_the_listing_then_collect_writes_it_and_an_edit_meanwhile_is_not_overwritten(
        sim, database_url, db, tmp_path):
    texts = corpus(tmp_path / "c.jsonl", 300)
    submitted = sections_cli("ingest", tmp_path / "c.jsonl", *embedding(sim, database_url), "--batch-api",
                             "--no-wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    summary = summary_of(submitted)
    assert summary["jobs_submitted"] == 1 and summary["embedded"] == 0 and summary["sections_pending"] == 300
    assert summary["submitted_cost_usd"] == pytest.approx(summary["submitted_sync_cost_usd"] / 2, abs=1e-6)
    assert not stored(db)
    listing = summary_of(sections_cli("batches", "--database-url", database_url, "--json"))
    assert [(job["collected"], job["sections"]) for job in listing] == [(False, 300)]

    # edited while its job ran, and embedded synchronously: the job's result for it is stale
    db.execute("update sections set content = 'rewritten meanwhile' where id = 's00005'")
    texts["s00005"] = "rewritten meanwhile"
    synced = summary_of(sections_cli("sync", *embedding(sim, database_url), "--json"))
    assert synced["embedded"] == 1 and sim.stats()["inputs"] == 1  # only the edited one: the rest is covered

    collected = sections_cli("batches", "--collect", "--wait", "--database-url", database_url, "--json")
    assert collected.returncode == 0, collected.stderr
    [summary] = summary_of(collected)  # one summary per model, settings and endpoint
    assert summary["embedded"] == 299 and summary["changed_count"] == 1
    check_vectors(db, texts)  # s00005 keeps the vector of its new text
    assert sim.stats()["batches"] == 1 and open_items(db) == 0
    listing = summary_of(sections_cli("batches", "--database-url", database_url, "--json"))
    assert [(job["collected"], job["written"], job["changed"]) for job in listing] == [(True, 299, 1)]


def test_sync_through_the_batch_api_and_a_cancelled_job_leaves_its_sections_due(sim, database_url, db, store):
    store.upsert_sections([{"id": f"t{i}", "title": "", "content": f"stored text {i}"} for i in range(200)])
    sim.configure(batch_delay=30.0)
    submitted = summary_of(sections_cli("sync", *embedding(sim, database_url), "--batch-api", "--no-wait", "--json"))
    assert submitted["jobs_submitted"] == 1 and submitted["sections_pending"] == 200
    batch_id = db.execute("select batch_id from section_batch_jobs").fetchone()[0]
    cancelled = sections_cli("batches", "--cancel", batch_id, "--database-url", database_url)
    assert cancelled.returncode == 0 and "cancelling" in cancelled.stdout, cancelled.stderr
    [collected] = summary_of(sections_cli("batches", "--collect", "--wait", "--database-url", database_url, "--json"))
    assert collected["embedded"] == 0 and collected["failed"] == 0 and collected["cancelled_count"] == 200
    assert open_items(db) == 0 and not stored(db)

    sim.configure(batch_delay=0.0)
    dry = summary_of(sections_cli("sync", *embedding(sim, database_url), "--dry-run", "--json"))
    assert dry["would_embed"] == 200
    assert dry["estimated_batch_cost_usd"] == pytest.approx(dry["estimated_cost_usd"] / 2, abs=1e-6)
    done = summary_of(sections_cli("sync", *embedding(sim, database_url), "--batch-api", "--json"))
    assert done["embedded"] == 200 and sim.stats()["batches"] == 2
    check_vectors(db, {f"t{i}": f"stored text {i}" for i in range(200)})


def test_the_batch_api_needs_an_openai_compatible_provider_and_its_flags_need_it(database_url, tmp_path):
    corpus(tmp_path / "c.jsonl", 3)
    local = sections_cli("ingest", tmp_path / "c.jsonl", "--database-url", database_url, "--batch-api")
    assert local.returncode == 1 and "Traceback" not in local.stderr
    assert "needs an OpenAI-compatible provider" in local.stderr
