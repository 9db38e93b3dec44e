"""Ctrl-C and SIGTERM during a run, through the ``sections`` command as a real subprocess.

What a user must see: the first signal stops sending within a second, what was paid for is written,
``interrupted: N stored, M not yet; run … again to finish`` is printed and the command exits 130
(SIGINT) or 143 (SIGTERM) within 5 s; a second signal exits at once with the same line. Never a
traceback, an ``Exception ignored`` or a C++ abort (what a second Ctrl-C gave while the interpreter
waited for requests in flight or a torch forward pass). "Stored" is checked against the database,
"paid for" against the simulator's count of inputs served, and the rerun against both.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from bench.reliability import child_env, write_jsonl
from sections.engine.dispatch import STOP_GRACE_S
from sections.reading.sample_corpus import stdlib_sections

ROOT = Path(__file__).resolve().parents[1]
MODEL = "text-embedding-3-small"
DIMS = 32
SECTIONS = 2000  # ~13 requests of ~160 sections at concurrency 1: a run of several seconds
LINE = re.compile(r"^interrupted: ([\d,]+) stored, ([\d,]+) not yet; run (.+) again to finish$", re.MULTILINE)
NEVER = ("Traceback", "Exception ignored", "Aborted", "terminate called")
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("interrupts") / "corpus.jsonl",
                       stdlib_sections(SECTIONS, tokens_per_section=200))


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sections.cli.app", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or child_env(), cwd=ROOT)


def remote(sim, database_url: str, model: str = MODEL) -> list[str]:
    return ["--model", model, "--base-url", sim.base_url, "--database-url", database_url,
            "--dimensions", str(DIMS), "--concurrency", "1"]


def wait_until(process: subprocess.Popen[str], ready, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def stored(database_url: str, model: str = MODEL) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("select count(*) from section_embeddings where model_name = %s", (model,)).fetchone()[0]


def sections_in(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("select count(*) from sections").fetchone()[0]


def ended(process: subprocess.Popen[str], signalled_at: float, within: float) -> tuple[int, str, str, float]:
    """The exit code, stdout, stderr and the seconds from the signal to the exit (at most ``within``)."""
    try:
        out, err = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"still running {within} s after the signal:\n{err[-3000:]}")
    return process.returncode, out, err, time.monotonic() - signalled_at


def said(err: str, again: str = "the same command") -> tuple[int, int]:
    """N and M from the one ``interrupted:`` line; and nothing a user must never see."""
    for bad in NEVER:
        assert bad not in err, err[-3000:]
    lines = LINE.findall(err)
    assert len(lines) == 1, err[-3000:]
    n, m, told = lines[0]
    assert told == again
    return int(n.replace(",", "")), int(m.replace(",", ""))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_sending_writes_what_was_paid_for_and_a_rerun_finishes_the_rest(
        signum, sim, database_url, corpus):
    sim.configure(latency_base=0.5)
    process = start("ingest", str(corpus), *remote(sim, database_url))
    wait_until(process, lambda: sim.stats()["by_status"].get("200", 0) >= 2, "two replies")
    process.send_signal(signum)
    signalled_at = time.monotonic()
    time.sleep(1.0)
    requests_after_1s = sim.stats()["requests"]
    code, _, err, seconds = ended(process, signalled_at, within=5.0)

    assert code == CODES[signum] and seconds < 5.0, err[-3000:]
    n, m = said(err)
    assert n + m == SECTIONS and 0 < n < SECTIONS
    assert sim.stats()["requests"] == requests_after_1s  # nothing sent later than 1 s after the signal
    assert stored(database_url) == n  # "stored" is what the database holds
    assert sim.stats()["inputs"] == n  # every input served was written: the replies in flight were awaited

    sim.reset()
    sim.configure(latency_base=0.0)
    rerun = subprocess.run([sys.executable, "-m", "sections.cli.app", "ingest", str(corpus), *remote(sim, database_url)],
                           capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sim.stats()["inputs"] == m  # the rerun embedded exactly what was not yet stored: nothing twice
    assert stored(database_url) == SECTIONS


def test_a_second_ctrl_c_exits_at_once_with_the_same_line(sim, database_url, corpus):
    sim.configure(latency_base=4.0)  # the request in flight outlasts the stop's grace period
    process = start("ingest", str(corpus), *remote(sim, database_url))
    wait_until(process, lambda: sim.stats()["in_flight"] >= 1, "a request in flight")
    process.send_signal(signal.SIGINT)
    first_at = time.monotonic()
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    code, _, err, seconds = ended(process, first_at, within=5.0)

    assert code == 130, err[-3000:]
    assert seconds < STOP_GRACE_S  # it did not wait for the reply in flight
    n, m = said(err)
    assert n + m == SECTIONS
    assert stored(database_url) >= n  # a batch committed as the process ended may not be counted yet


def test_sync_stops_on_sigterm_with_what_was_committed(sim, database_url, corpus):
    first = subprocess.run([sys.executable, "-m", "sections.cli.app", "ingest", str(corpus), *remote(sim, database_url)],
                           capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    other = "text-embedding-3-large"  # every section is due for it
    sim.reset()
    sim.configure(latency_base=0.5)
    process = start("sync", *remote(sim, database_url, other))
    wait_until(process, lambda: sim.stats()["by_status"].get("200", 0) >= 2, "two replies")
    process.send_signal(signal.SIGTERM)
    code, _, err, _ = ended(process, time.monotonic(), within=5.0)

    assert code == 143, err[-3000:]
    n, m = said(err, again="sync")
    assert n + m == SECTIONS and 0 < n < SECTIONS
    assert stored(database_url, other) == n == sim.stats()["inputs"]


def test_ctrl_c_while_the_local_model_computes_exits_130_without_an_abort(database_url, corpus, tmp_path):
    copies = 5  # enough that a fast machine (or a GPU) is still computing when the signal comes
    lines = corpus.read_text().splitlines()
    big = tmp_path / "big.jsonl"
    big.write_text("".join(line.replace('{"id": "', f'{{"id": "copy{k}-', 1)
                           .replace('"content": "', f'"content": "copy {k}: ', 1) + "\n"
                           for k in range(copies) for line in lines))
    process = start("ingest", str(big), "--database-url", database_url)  # all-MiniLM-L6-v2
    wait_until(process, lambda: sections_in(database_url) > 0, "sections stored", timeout=300)
    time.sleep(0.5)  # the first requests are inside the model now
    process.send_signal(signal.SIGINT)
    code, _, err, _ = ended(process, time.monotonic(), within=5.0)

    assert code == 130, err[-3000:]
    n, m = said(err)
    assert n + m == copies * SECTIONS
    assert stored(database_url, "all-MiniLM-L6-v2") == n


def test_the_demo_stops_on_ctrl_c_and_says_run_the_demo_again(sim, database_url):
    sim.configure(latency_base=0.5)
    env = dict(child_env(), OPENAI_BASE_URL=sim.base_url)  # the demo takes no --base-url
    process = start("demo", "--model", MODEL, "--database-url", database_url, env=env)
    wait_until(process, lambda: sim.stats()["by_status"].get("200", 0) >= 1, "a reply")
    process.send_signal(signal.SIGINT)
    code, out, err, _ = ended(process, time.monotonic(), within=5.0)

    assert code == 130, err[-3000:]
    n, _ = said(err, again="the demo")
    assert stored(database_url) == n  # (two topics share a text: the simulator served one input fewer)
    assert "“" not in out  # no search ran after the stop
