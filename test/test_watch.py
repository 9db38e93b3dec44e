"""``sections watch`` as users run it: a real subprocess against the simulator and the embedded
Postgres, with sections written by plain SQL (as any app or Supabase client would).

The simulator's ``/stats`` proves what was paid for: every test checks inputs served against
sections embedded, so nothing is embedded twice whatever runs, stops or dies.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sections.fingerprint import section_text
from sections.simulator.server import expected_embedding

MODEL = "text-embedding-3-small"
DIMS = 16


def start_watch(sim, database_url, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "sections.cli.app", "watch", "--model", MODEL, "--base-url", sim.base_url,
               "--database-url", database_url, "--dimensions", str(DIMS), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OPENAI_API_KEY": "sk-test"})
    started = time.monotonic()
    while time.monotonic() - started < 60:  # ready once it says how it hears of changes
        line = process.stderr.readline()
        if "watching" in line or not line:
            process.start_line = line  # type: ignore[attr-defined]
            return process
    raise AssertionError("the watcher never started")


def stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str, str]:
    process.send_signal(signum)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for(predicate, timeout: float = 20.0, step: float = 0.05) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError("condition not met in time")


def stored(db) -> dict[str, np.ndarray]:
    return {row[0]: np.asarray(row[1]) for row in
            db.execute("select section_id, embedding from section_embeddings where model_name = %s", (MODEL,))}


def insert(db, rows: list[tuple[str, str, str]], collection: str = "default") -> None:
    with db.cursor() as cur:
        cur.executemany("insert into sections (id, title, content, collection) values (%s, %s, %s, %s)",
                        [(*row, collection) for row in rows])


def is_current(vectors: dict[str, np.ndarray], section_id: str, title: str, content: str) -> bool:
    vector = vectors.get(section_id)
    return vector is not None and np.allclose(vector, expected_embedding(section_text(title, content), MODEL, DIMS),
                                              atol=1e-6)


def test_inserts_updates_and_deletes_by_plain_sql_are_followed_at_once(sim, database_url, db):
    insert(db, [("before", "Before", "was there when the watcher started")])
    watcher = start_watch(sim, database_url)
    try:
        wait_for(lambda: "before" in stored(db))
        started = time.monotonic()
        insert(db, [("new", "New", "inserted by an app")])
        latency = wait_for(lambda: "new" in stored(db))
        assert latency < 5, latency  # NOTIFY, not the 30 s poll
        db.execute("update sections set content = 'edited by an admin' where id = 'new'")
        wait_for(lambda: is_current(stored(db), "new", "New", "edited by an admin"))
        db.execute("delete from sections where id = 'before'")
        assert "before" not in stored(db)  # its vector went with it
        db.execute("update sections set metadata = '{\"tag\": 1}' where id = 'new'")  # not title/content
        time.sleep(1.0)
        assert time.monotonic() - started < 20
    finally:
        code, _, err = stop(watcher)
    assert code == 0, err
    assert "Traceback" not in err
    assert sim.stats()["inputs"] == 3  # before, new, and its edit: the metadata change cost nothing


def test_sigterm_writes_what_was_paid_for_and_a_restart_after_kill_9_pays_nothing_twice(sim, database_url, db):
    insert(db, [(f"s{i:04d}", f"T{i}", f"section {i} " + "words " * 30) for i in range(1500)])
    sim.configure(latency_base=0.2)
    first = start_watch(sim, database_url, "--concurrency", "2")
    wait_for(lambda: len(stored(db)) > 0, timeout=60)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=15)
    time.sleep(0.5)  # a request the killed watcher had in flight is answered (and counted) by now
    after_kill = len(stored(db))
    assert after_kill < 1500
    # kill -9 loses what was in flight (a claim commits its vectors at once), never more than a
    # claim: 500 sections; whether anything was in flight depends on when the kill lands
    lost_in_kill = sim.stats()["inputs"] - after_kill
    assert 0 <= lost_in_kill <= 500

    second = start_watch(sim, database_url, "--concurrency", "2")
    wait_for(lambda: len(stored(db)) > after_kill + 50, timeout=60)
    code, _, err = stop(second)
    assert code == 0, err
    assert "Traceback" not in err
    served_stopped = sim.stats()["inputs"]
    assert served_stopped - lost_in_kill == len(stored(db))  # SIGTERM: everything served was written

    sim.configure(latency_base=0.0)
    third = start_watch(sim, database_url)
    wait_for(lambda: len(stored(db)) == 1500, timeout=60)
    stop(third)
    vectors = stored(db)
    # across a kill -9 and a SIGTERM: every stored section paid for once, plus what the kill lost
    assert sim.stats()["inputs"] == 1500 + lost_in_kill
    assert all(is_current(vectors, f"s{i:04d}", f"T{i}", f"section {i} " + "words " * 30) for i in range(0, 1500, 97))
    assert db.execute("select count(*) from section_workers").fetchone()[0] == 0


def test_two_watchers_share_a_burst_and_never_embed_a_section_twice(sim, database_url, db):
    sim.configure(latency_base=0.05)
    watchers = [start_watch(sim, database_url, "--concurrency", "2") for _ in range(2)]
    try:
        insert(db, [(f"b{i:04d}", "", f"burst section {i}") for i in range(2000)])
        wait_for(lambda: len(stored(db)) == 2000, timeout=90)
        time.sleep(0.5)
    finally:
        results = [stop(watcher) for watcher in watchers]
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    assert sim.stats()["inputs"] == 2000


def test_a_refused_section_rests_between_attempts_and_is_given_up_until_it_changes(sim, database_url, db):
    sim.configure(poison=["POISON"])
    insert(db, [("bad", "", "POISON pill"), ("good", "", "fine")])
    watcher = start_watch(sim, database_url, "--retry-delay", "1", "--max-attempts", "3", "--poll-interval", "0.5",
                          "--json")
    try:
        wait_for(lambda: db.execute("select attempts from embedding_failures where section_id = 'bad'")
                 .fetchone() == (3,), timeout=30)
        time.sleep(4)  # given up: no fourth attempt, whatever the polls
        assert db.execute("select attempts from embedding_failures").fetchone() == (3,)
        db.execute("update sections set content = 'cured' where id = 'bad'")
        wait_for(lambda: "bad" in stored(db))
        assert db.execute("select count(*) from embedding_failures").fetchone() == (0,)
    finally:
        code, out, err = stop(watcher)
    assert code == 0, err
    passes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sum(p["failed"] for p in passes) == 3 and sum(p["embedded"] for p in passes) == 2


def test_once_is_one_pass_and_a_pooler_url_or_poll_only_says_it_polls(sim, database_url, db):
    insert(db, [(f"o{i}", "", f"once {i}") for i in range(30)])
    done = subprocess.run([sys.executable, "-m", "sections.cli.app", "watch", "--model", MODEL, "--base-url", sim.base_url,
                           "--database-url", database_url, "--dimensions", str(DIMS), "--once"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "OPENAI_API_KEY": "sk-test"})
    assert done.returncode == 0, done.stderr
    assert "done: 1 pass(es), 30 embedded" in done.stderr
    watcher = start_watch(sim, database_url, "--poll-only", "--poll-interval", "0.5")
    code, _, err = stop(watcher)
    assert code == 0 and "polling every 0.5 s (asked for)" in watcher.start_line, watcher.start_line


@pytest.mark.parametrize("bad", [["--poll-interval", "0"], ["--max-attempts", "0"]])
def test_bad_settings_are_one_line(sim, database_url, bad):
    result = subprocess.run([sys.executable, "-m", "sections.cli.app", "watch", "--database-url", database_url, *bad],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_status_shows_what_is_due_how_long_it_waited_and_the_workers(sim, database_url, db):
    insert(db, [(f"w{i}", "", f"waiting {i}") for i in range(5)])
    time.sleep(1.2)
    status = lambda: json.loads(subprocess.run(  # noqa: E731
        [sys.executable, "-m", "sections.cli.app", "status", "--model", MODEL, "--database-url", database_url, "--json"],
        capture_output=True, text=True, timeout=60).stdout)
    before = status()["models"][MODEL]["collections"]["default"]
    assert before["missing"] == 5 and before["lag_s"] >= 1.0
    watcher = start_watch(sim, database_url)
    try:
        wait_for(lambda: len(stored(db)) == 5)
        after = wait_for(lambda: status()["workers"] and status()["workers"][0]["embedded"] == 5, timeout=30) >= 0
        report = status()
        assert after and report["models"][MODEL]["collections"]["default"]["lag_s"] is None
        worker = report["workers"][0]
        assert (worker["command"], worker["model"], worker["collection"]) == ("watch", MODEL, "default")
        assert worker["pid"] == watcher.pid and worker["last_beat_s"] < 15
    finally:
        stop(watcher)
    assert status()["workers"] == []


def test_a_provider_outage_is_not_held_against_the_sections(sim, database_url, db):
    sim.configure(error_rate=1.0)  # every request: a 500
    watcher = start_watch(sim, database_url, "--poll-interval", "1", "--json")
    try:
        insert(db, [(f"x{i}", "", f"during the outage {i}") for i in range(20)])
        # 20 sections x 5 attempts each once split down to one input a request: the pass gives up on all
        wait_for(lambda: sim.stats()["by_status"].get("500", 0) >= 110, timeout=120)
        time.sleep(1.0)
        assert db.execute("select count(*) from embedding_failures").fetchone() == (0,)
        sim.configure(error_rate=0.0)
        wait_for(lambda: len(stored(db)) == 20, timeout=90)
    finally:
        code, out, err = stop(watcher)
    assert code == 0, err
    passes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(p["provider_unavailable"] for p in passes) and sum(p["failed"] for p in passes) == 0


@pytest.mark.parametrize("route", ["pgbouncer"], indirect=True)
def test_through_a_transaction_pooler_it_polls_or_listens_on_a_direct_url(sim, database_url, db, embedded_pg):
    assert "127.0.0.1" in database_url  # pgbouncer in transaction mode, in front of the embedded server
    watcher = start_watch(sim, database_url, "--poll-interval", "1")
    try:
        assert "does not carry LISTEN/NOTIFY" in watcher.start_line, watcher.start_line
        insert(db, [("pooled", "", "written while the watcher polls through pgbouncer")])
        assert wait_for(lambda: "pooled" in stored(db), timeout=30) < 10
    finally:
        code, _, err = stop(watcher)
    assert code == 0, err
    direct = embedded_pg.url_for(db.info.dbname)
    listening = start_watch(sim, database_url, "--listen-url", direct, "--poll-interval", "60")
    try:
        assert "listening for changes" in listening.start_line, listening.start_line
        insert(db, [("heard", "", "announced by NOTIFY on the direct connection")])
        assert wait_for(lambda: "heard" in stored(db), timeout=30) < 10  # long before the 60 s poll
    finally:
        code, _, err = stop(listening)
    assert code == 0, err
    assert sim.stats()["inputs"] == 2
